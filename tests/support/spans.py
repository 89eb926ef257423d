"""Where a worker subprocess's spans go in tests: the SDK's console exporter writing one
JSON object per line to the file ``SANDRUN_TEST_SPANS`` names, which the test reads."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

ENV = "SANDRUN_TEST_SPANS"


def file_exporter() -> ConsoleSpanExporter:
    """The ``exporter`` the test workers name (``tests.support.spans:file_exporter``)."""
    out = open(os.environ[ENV], "a", encoding="utf-8")  # noqa: SIM115 (the exporter's stream)

    def one_line(span: ReadableSpan) -> str:
        return span.to_json(indent=None) + "\n"

    return ConsoleSpanExporter(out=out, formatter=one_line)


def read_spans(path: Path) -> list[dict[str, Any]]:
    """The spans written so far, as the SDK's JSON form."""
    if not path.exists():
        return []
    complete = path.read_text().rpartition("\n")[0]  # not a line still being written
    return [json.loads(line) for line in complete.splitlines() if line.strip()]
