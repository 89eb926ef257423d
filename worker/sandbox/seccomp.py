"""A seccomp-BPF filter that denies jobs the system calls they never need.

The executor hands :func:`filter_fd` to bubblewrap (``bwrap --seccomp FD``),
which loads the program right before it execs the job, so the filter covers
the job and everything it starts, and none of the set-up before it. What is
denied follows nsjail and Docker's default profile: the calls that reach
other processes' memory, mounts and namespaces, kernel modules, keyrings,
eBPF, perf, the clocks and the legacy hardware interfaces (:data:`DENIED`).
Everything else is allowed: this is a blocklist of kernel attack surface, not
an allowlist of what programs may do, so ordinary programs, ``fork``, threads
and ``subprocess`` keep working.

* A denied call fails with ``EPERM``, as it would for a user without the
  capability, so programs that probe (and fall back) keep running.
* ``clone`` fails with ``EPERM`` when its flags ask for any new namespace
  (one masked-equality rule per ``CLONE_NEW*`` bit); ``clone3`` fails with
  ``ENOSYS`` because seccomp cannot read its flags from user memory, and glibc
  then falls back to ``clone`` (Docker does the same).
* Only the native architecture is in the filter. A syscall of any other ABI
  (``int 0x80`` i386 calls on x86_64) kills the process with ``SIGSYS``
  instead of slipping past rules written for native numbers. On x86_64 the
  x32 ABI shares the native audit arch; libseccomp's x86_64 program sends
  every number at or above ``0x40000000`` (the x32 bit) to that same kill.

Why libseccomp (through the ctypes binding ``pyseccomp``): it compiles the
rules to BPF, checks the architecture and knows each architecture's syscall
numbers; by hand that is a table per architecture and a BPF assembler.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import importlib
import os
from types import ModuleType
from typing import Any

from worker.sandbox.confine import IsolationError

DENIED: tuple[str, ...] = (
    # other processes: their memory, their file descriptors, kernel pointer order
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    # mounts and file systems (a job's view of the file system is bwrap's to make)
    "mount", "umount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree",
    "fsopen", "fsmount", "fsconfig", "fspick", "mount_setattr", "open_by_handle_at",
    "name_to_handle_at", "quotactl", "quotactl_fd", "swapon", "swapoff", "nfsservctl",
    "fanotify_init", "acct",
    # namespaces (and clone with CLONE_NEW* flags, below)
    "setns", "unshare",
    # the kernel itself: modules, kexec, reboot, eBPF, perf, keyrings, its log
    "init_module", "finit_module", "delete_module", "create_module", "query_module",
    "get_kernel_syms", "kexec_load", "kexec_file_load", "reboot", "bpf", "perf_event_open",
    "userfaultfd", "keyctl", "add_key", "request_key", "syslog", "lookup_dcookie",
    "_sysctl", "uselib",
    # io_uring: a large attack surface Docker denies too; programs fall back to epoll
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    # clocks
    "settimeofday", "stime", "clock_settime", "adjtimex", "clock_adjtime",
    # hardware and legacy execution modes (personality can turn ASLR off)
    "iopl", "ioperm", "vm86", "vm86old", "personality",
)

#: The ``CLONE_NEW*`` flags: mount, cgroup, UTS, IPC, user, PID, network, time.
#: (0x80, CLONE_NEWTIME, is the exit signal's high bit in clone(2) and valid
#: only in clone3 and unshare, both denied; matching it in clone costs nothing.)
NAMESPACE_FLAGS: tuple[int, ...] = (
    0x00020000, 0x02000000, 0x04000000, 0x08000000,
    0x10000000, 0x20000000, 0x40000000, 0x00000080,
)

_SECCOMP_GET_ACTION_AVAIL = 2
_FIX_LIBSECCOMP = "install libseccomp 2.5 or newer (Debian package libseccomp2)"


def _library() -> ModuleType:
    """Import pyseccomp, which loads libseccomp.so.2 when it is imported."""
    try:
        return importlib.import_module("pyseccomp")
    except ImportError:
        raise IsolationError("no seccomp filter: the Python package pyseccomp is not "
                             "installed; reinstall sandrun (pip install -e .), which "
                             "depends on it") from None
    except RuntimeError:  # pyseccomp's "Unable to find libseccomp"
        raise IsolationError("no seccomp filter: libseccomp.so.2 is not installed; "
                             + _FIX_LIBSECCOMP) from None
    except (OSError, AttributeError) as exc:  # found, but not loadable or too old
        raise IsolationError(f"no seccomp filter: libseccomp cannot be loaded ({exc}); "
                             + _FIX_LIBSECCOMP) from None


def _number(seccomp: ModuleType, name: str) -> int:
    """The native number of syscall ``name``; negative when libseccomp does not know
    it (-1) or it does not exist on this architecture (pseudo numbers below -1)."""
    return int(seccomp.resolve_syscall(seccomp.Arch.NATIVE, name))


def _rules(seccomp: ModuleType) -> Any:
    """The filter as a pyseccomp ``SyscallFilter`` (see the module docstring)."""
    if _number(seccomp, "clone3") < 0:
        raise IsolationError("no seccomp filter: this libseccomp does not know clone3, "
                             "so jobs could create namespaces through it; " + _FIX_LIBSECCOMP)
    eperm = seccomp.ERRNO(errno.EPERM)
    flt = seccomp.SyscallFilter(seccomp.ALLOW)
    flt.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)
    for nr in (_number(seccomp, name) for name in DENIED):
        # Below -1: not a syscall on this architecture. -1: newer than this libseccomp
        # (2.5.4 knows every name here), so left allowed rather than failing the filter.
        if nr >= 0:
            flt.add_rule(eperm, nr)
    s390 = seccomp.system_arch() in (seccomp.Arch.S390, seccomp.Arch.S390X)
    flags = 1 if s390 else 0  # clone(stack, flags, ...) on s390
    for bit in NAMESPACE_FLAGS:
        flt.add_rule(eperm, "clone", seccomp.Arg(flags, seccomp.MASKED_EQ, bit, bit))
    flt.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    return flt


@functools.cache
def program() -> bytes:
    """The filter as raw BPF, as ``bwrap --seccomp`` reads it; built once per process.

    Raises IsolationError (saying what to install) when libseccomp is missing or
    refuses the rules; :func:`unavailable` tells beforehand.
    """
    seccomp = _library()
    try:
        flt = _rules(seccomp)
        with os.fdopen(os.memfd_create("sandrun-seccomp-export"), "w+b", buffering=0) as fh:
            flt.export_bpf(fh)
            fh.seek(0)
            return fh.read()
    except OSError as exc:
        raise IsolationError(f"no seccomp filter: libseccomp refused the job filter ({exc}); "
                             + _FIX_LIBSECCOMP) from None


def _kernel_reason(seccomp: ModuleType) -> str | None:
    """Why this kernel cannot load the filter, or None: asks whether it has the
    KILL_PROCESS action (Linux 4.14+ with CONFIG_SECCOMP_FILTER)."""
    libc = ctypes.CDLL(None, use_errno=True)
    action = ctypes.c_uint32(seccomp.KILL_PROCESS)
    if libc.syscall(_number(seccomp, "seccomp"), _SECCOMP_GET_ACTION_AVAIL, 0,
                    ctypes.byref(action)) == 0:
        return None
    return (f"no seccomp filter: this kernel cannot load one "
            f"({os.strerror(ctypes.get_errno())}); it needs Linux 4.14 or newer built with "
            "CONFIG_SECCOMP_FILTER, and a container must let the worker call seccomp(2)")


@functools.cache
def unavailable() -> str | None:
    """None when jobs can get the filter here; otherwise one sentence saying why not
    and what to install. Measured once per process, before the first job uses it."""
    try:
        reason = _kernel_reason(_library())
        if reason is None:
            program()  # libseccomp may still refuse the rules
    except IsolationError as exc:
        return str(exc)
    return reason


def filter_fd() -> int:
    """A new descriptor of a sealed memfd holding :func:`program`, at offset 0, for
    ``bwrap --seccomp FD`` (pass it with ``pass_fds``; it is close-on-exec otherwise).
    The caller closes it; each bwrap run needs its own, as bwrap reads it to the end."""
    data = program()
    fd = os.memfd_create("sandrun-seccomp", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                    | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd
