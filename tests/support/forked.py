"""Helpers for tests of process confinement: run a check in a forked child, and a
job that forks a bounded number of children (a fork bomb that cannot run away)."""

from __future__ import annotations

import os
from collections.abc import Callable

#: Job code: forks up to 40 sleeping children and prints how many it made before
#: the process limit refused one ("unlimited" if none was refused).
BOUNDED_FORKS = """
import os, time
made = 0
try:
    for _ in range(40):
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        made += 1
    print("unlimited")
except BlockingIOError:
    print("refused after", made)
"""


def in_child(run: Callable[[], str]) -> str:
    """``run()`` in a forked child: what it returned, or ``error: ...`` if it raised."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            result = run()
        except BaseException as exc:
            result = f"error: {exc}"
        os.write(write_end, result.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        out = fh.read().decode()
    os.waitpid(pid, 0)
    return out
