"""User tasks of the Sandrun app, used to check that they get the same hooks."""

from __future__ import annotations

import os
import time

from worker.node.app import app


@app.task(name="tests.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="tests.die")
def die() -> None:
    os._exit(1)


@app.task(name="tests.boom")
def boom() -> None:
    raise ValueError("boom from a user task")


@app.task(name="tests.touch")
def touch(path: str, line: str, seconds: float = 0) -> str:
    """Append ``line`` to ``path`` after ``seconds``: a side effect a test can count."""
    time.sleep(seconds)
    with open(path, "a") as fh:
        fh.write(line + "\n")
    return line


@app.task(name="tests.touch_then_fail")
def touch_then_fail(path: str, line: str) -> None:
    """Append ``line`` to ``path``, then fail: a final failure with a side effect."""
    with open(path, "a") as fh:
        fh.write(line + "\n")
    raise ValueError(f"failed after writing {line!r}")
