"""The progress line protocol: what a job writes on ``SANDRUN_PROGRESS_FD``.

Every job starts with one extra descriptor, the write end of a pipe whose number is in
``SANDRUN_PROGRESS_FD``; the pool process reads the other end while the job runs. A
pipe's write end lets the job write bytes to the worker and nothing else (no path, no
socket, nothing to read). A report is one line of at most :data:`MAX_LINE` bytes:

* ``<done>/<total> [message]``: integer steps, ``0 <= done <= total``, ``total >= 1``
  (``4/10 training``), or
* ``<percent>% [message]``: a decimal from 0 to 100 (``40%``, ``12.5% loading``).

The message is the rest of the line: control characters are dropped and it is cut to
:data:`~worker.models.MAX_PROGRESS_MESSAGE` characters. Anything else (a longer line,
numbers out of range, NaN, text) is ignored: the job is a stranger, and a bad report
must cost it its report, never the worker anything. Only the latest report matters:
each read is scanned from its last line back to the first valid report, so a read of
valid reports costs one parse, and a flood of invalid ones at most a cheap failed match
per line (the job waits on the pipe meanwhile; it cannot make the worker fall behind).
:mod:`worker.sandbox.live` forwards at most a few reports a second.
"""

from __future__ import annotations

import re

from pydantic import ValidationError

from worker.models import MAX_PROGRESS_MESSAGE, Progress

#: Longest report line, newline excluded; longer ones are skipped whole.
MAX_LINE = 256
ENV_VAR = "SANDRUN_PROGRESS_FD"

_LINE = re.compile(rb"\s*(?:(\d{1,13})\s*/\s*(\d{1,13})|(\d{1,3}(?:\.\d{1,6})?)\s*%)"
                   rb"(?:\s+(.*?))?\s*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e]")


def parse_line(line: bytes) -> Progress | None:
    """The report on one line (without its newline), or None when it is not one."""
    if len(line) > MAX_LINE:
        return None
    match = _LINE.fullmatch(line)
    if match is None:
        return None
    done, total, percent, message = match.groups()
    text = _CONTROL.sub("", (message or b"").decode("utf-8", "replace"))
    text = text.strip()[:MAX_PROGRESS_MESSAGE]
    try:
        if percent is not None:
            return Progress(percent=float(percent), message=text)
        steps, whole = int(done), int(total)
        share = 100.0 * steps / whole if whole else 0.0
        return Progress(percent=min(share, 100.0), done=steps, total=whole, message=text)
    except ValidationError:  # out of range: 150%, 11/10, 0 total
        return None


class ProgressReader:
    """Reads the job's progress pipe chunk by chunk and keeps the latest valid report.

    A partial line waits for its end (at most :data:`MAX_LINE` bytes of it are kept;
    a longer one is skipped up to its newline)."""

    def __init__(self) -> None:
        self._partial = b""
        self._skipping = False  # inside a line already known to be too long

    def feed(self, chunk: bytes) -> Progress | None:
        """The latest valid report among the complete lines ``chunk`` ends, if any."""
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if lines:  # the chunk ends at least one line: the kept partial one is its start
            if self._skipping or len(self._partial) + len(lines[0]) > MAX_LINE:
                lines[0] = b""  # the end of a line too long to be a report
            else:
                lines[0] = self._partial + lines[0]
            self._partial, self._skipping = b"", False
        latest = None
        for line in reversed(lines):
            if line and len(line) <= MAX_LINE:  # the cheap refusals first
                latest = parse_line(line)
                if latest is not None:
                    break
        self._keep(tail)
        return latest

    def _keep(self, tail: bytes) -> None:
        if self._skipping:
            return
        if len(self._partial) + len(tail) > MAX_LINE:
            self._partial, self._skipping = b"", True
        else:
            self._partial += tail
