"""User tasks of the Sandrun app, used to check that they get the same hooks."""

from __future__ import annotations

import os

from worker.app import app


@app.task(name="tests.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="tests.die")
def die() -> None:
    os._exit(1)


@app.task(name="tests.boom")
def boom() -> None:
    raise ValueError("boom from a user task")
