"""The job seccomp filter, loaded by a real bubblewrap on the real kernel.

Each probe runs twice under ``bwrap --unshare-user --cap-add ALL``: with the
filter and without it. The sandbox holds every capability in its own user
namespace, so a call that fails only in the filtered run was refused by the
filter, not by missing privilege.
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from worker.sandbox import seccomp

BWRAP = "/usr/bin/bwrap"
KILLED_BY_SIGSYS = 128 + signal.SIGSYS  # how bwrap reports a job the kernel killed
X86_64 = platform.machine() == "x86_64"

PRELUDE = """
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def report(result):
    print("ok" if result >= 0 else errno.errorcode[ctypes.get_errno()], flush=True)
"""

CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
CLONE_RAW = """
pid = libc.syscall({nr}, {flags} | 17, 0, 0, 0, 0)  # 17: SIGCHLD
if pid == 0:
    os._exit(0)
if pid > 0:
    os.waitpid(pid, 0)
report(pid)
"""

# name: (program, result with the filter, result without it)
DENIED_CALLS = {
    "unshare_user": (f"report(libc.unshare({CLONE_NEWUSER}))", "EPERM", "ok"),
    "ptrace_traceme": ("report(libc.ptrace(0, 0, None, None))", "EPERM", "ok"),
    "mount_tmpfs": ('report(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))', "EPERM", "ok"),
    "clone_newnet": (CLONE_RAW.format(nr="{clone}", flags=CLONE_NEWNET), "EPERM", "ok"),
    "clone_newuser": (CLONE_RAW.format(nr="{clone}", flags=CLONE_NEWUSER), "EPERM", "ok"),
    "clone3": ("report(libc.syscall({clone3}, None, 0))", "ENOSYS", "EINVAL"),
    "personality_query": ("report(libc.personality(0xffffffff))", "EPERM", "ok"),
}

ALLOWED_CALLS = {
    "fork": "pid = os.fork()\nif pid == 0: os._exit(7)\n"
            "report(0 if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7 else -1)",
    "threads": "import threading\nseen = []\nt = threading.Thread(target=seen.append, args=(1,))\n"
               "t.start(); t.join()\nreport(0 if seen == [1] else -1)",
    "ordinary_program": "import subprocess\nprint('hello', flush=True)\n"
                        "path = os.path.join(sys.argv[1], 'out.txt')\n"
                        "with open(path, 'w') as fh: fh.write('written')\n"
                        "subprocess.run(['true'], check=True)\n"
                        "report(0 if open(path).read() == 'written' else -1)",
}

# mov eax, 20 (getpid in the i386 table); int 0x80; ret
INT80_GETPID = """
import mmap
page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(bytes([0xb8, 20, 0, 0, 0, 0xcd, 0x80, 0xc3]))
call = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
print("i386 getpid:", call(), flush=True)
"""
X32_GETPID = "report(libc.syscall(0x40000000 | 39))"  # 39: getpid in the x86_64 table


def numbers() -> dict[str, int]:
    """Native numbers of the raw syscalls the probes make (they differ per architecture)."""
    import pyseccomp

    return {name: pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
            for name in ("clone", "clone3")}


def in_bwrap(code: str, *, filtered: bool, arg: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``code`` (after PRELUDE) in a bwrap sandbox, with the job filter or without."""
    argv = [BWRAP, "--dev-bind", "/", "/", "--unshare-user", "--cap-add", "ALL"]
    fds: tuple[int, ...] = ()
    if filtered:
        fds = (seccomp.filter_fd(),)
        argv += ["--seccomp", str(fds[0])]
    try:
        return subprocess.run([*argv, "--", sys.executable, "-c", PRELUDE + code, arg],
                              pass_fds=fds, capture_output=True, text=True, timeout=60,
                              check=False)
    finally:
        for fd in fds:
            os.close(fd)


def last_line(run: subprocess.CompletedProcess[str]) -> str:
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr}"
    return run.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def bwrap() -> None:
    """Skip unless this host can build the filter and run bwrap with a user namespace."""
    reason = seccomp.unavailable()
    if reason is not None:
        pytest.skip(reason)
    if not os.access(BWRAP, os.X_OK):
        pytest.skip(f"{BWRAP} is not installed (Debian package bubblewrap)")
    trial = subprocess.run([BWRAP, "--dev-bind", "/", "/", "--unshare-user", "--", "true"],
                           capture_output=True, text=True, timeout=60, check=False)
    if trial.returncode != 0:
        pytest.skip(f"bwrap cannot make a user namespace here: {trial.stderr.strip()}")


def test_program_is_raw_bpf_built_once() -> None:
    if (reason := seccomp.unavailable()) is not None:
        pytest.skip(reason)
    code = seccomp.program()
    assert code is seccomp.program()
    assert code and len(code) % 8 == 0  # struct sock_filter is 8 bytes


def test_filter_fd_is_a_sealed_copy_at_offset_zero() -> None:
    if (reason := seccomp.unavailable()) is not None:
        pytest.skip(reason)
    fd = seccomp.filter_fd()
    try:
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0
        assert not os.get_inheritable(fd)  # pass_fds makes it inheritable in bwrap only
        assert os.read(fd, 1 << 20) == seccomp.program()
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"\0" * 8, 0)
    finally:
        os.close(fd)


def test_the_job_runs_in_filter_mode(bwrap: None) -> None:
    status = "print(open('/proc/self/status').read().split('Seccomp:')[1].split()[0])"
    assert last_line(in_bwrap(status, filtered=True)) == "2"  # SECCOMP_MODE_FILTER


@pytest.mark.parametrize("name", DENIED_CALLS)
def test_denied_call_fails_only_under_the_filter(bwrap: None, name: str) -> None:
    code, with_filter, without = DENIED_CALLS[name]
    code = code.format(**numbers())
    assert last_line(in_bwrap(code, filtered=False)) == without
    assert last_line(in_bwrap(code, filtered=True)) == with_filter


@pytest.mark.parametrize("name", ALLOWED_CALLS)
def test_ordinary_work_still_runs(bwrap: None, name: str, tmp_path: Path) -> None:
    assert last_line(in_bwrap(ALLOWED_CALLS[name], filtered=True, arg=str(tmp_path))) == "ok"


@pytest.mark.skipif(not X86_64, reason="the x32 ABI and int 0x80 exist on x86_64 only")
@pytest.mark.parametrize("code", [X32_GETPID, INT80_GETPID], ids=["x32", "i386"])
def test_foreign_abi_syscall_kills_the_job(bwrap: None, code: str) -> None:
    unfiltered = in_bwrap(code, filtered=False)  # ENOSYS, or a pid when that ABI is built in
    assert unfiltered.returncode != KILLED_BY_SIGSYS, unfiltered.stderr
    assert in_bwrap(code, filtered=True).returncode == KILLED_BY_SIGSYS
