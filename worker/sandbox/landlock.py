"""Landlock, the Linux LSM that lets an unprivileged process restrict itself (5.13+).

Used by :mod:`worker.sandbox.confine` so that a job may change files only beneath its
own directory. Only rights that *change* the file system are handled (write,
truncate, remove, make, link or rename elsewhere): reading and executing stay
as the job user's permissions allow. Any Landlock domain also forbids ptrace of
processes outside it, so ``/proc/<pid>/environ`` and ``/proc/<pid>/mem`` of the
worker are closed to a job even when both run as the same user (measured on
6.18: a process with CAP_SYS_PTRACE on the host may still read ``environ``, but
jobs never have it); ABI 6 adds signals to, and abstract unix sockets of, them.
Bindings via ctypes because Python has none; syscall numbers are the same on
every architecture.
"""

from __future__ import annotations

import ctypes
import os

_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_RULE_PATH_BENEATH = 1
_WRITE_FILE, _REFER, _TRUNCATE = 1 << 1, 1 << 13, 1 << 14
#: ABI 1 rights that change the file system: write a file, remove and make (bits 4-12).
_CHANGES = _WRITE_FILE | sum(1 << bit for bit in range(4, 13))
_SCOPE_UNIX_AND_SIGNALS = 0b11  # ABI 6
PR_SET_NO_NEW_PRIVS = 38

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _error(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def abi() -> int:
    """This kernel's Landlock ABI version; 0 if it has none or Landlock is not enabled."""
    version = _libc.syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(0, int(version))


def restrict(version: int, rules: list[tuple[int, bool]]) -> None:
    """Forbid the calling thread (and what it execs) every change to the file system
    except beneath the ``(O_PATH descriptor, is a directory)`` pairs of ``rules``
    (a file gets write and truncate only). Sets ``no_new_privs``, as Landlock
    requires of an unprivileged process."""
    changes = _CHANGES | (_REFER if version >= 2 else 0) | (_TRUNCATE if version >= 3 else 0)
    attr = _RulesetAttr(changes, 0, _SCOPE_UNIX_AND_SIGNALS if version >= 6 else 0)
    ruleset = int(_libc.syscall(_CREATE_RULESET, ctypes.byref(attr),
                                ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0)))
    if ruleset < 0:
        raise _error("cannot create a Landlock ruleset")
    try:
        for fd, is_dir in rules:
            rule = _PathBeneath(changes if is_dir else changes & (_WRITE_FILE | _TRUNCATE), fd)
            if _libc.syscall(_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0):
                raise _error("cannot add a Landlock rule")
        if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
            raise _error("cannot set no_new_privs")
        if _libc.syscall(_RESTRICT_SELF, ruleset, 0):
            raise _error("cannot enforce the Landlock ruleset")
    finally:
        os.close(ruleset)
