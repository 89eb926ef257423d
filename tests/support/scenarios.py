"""The reliability tier's end-of-run table: rows recorded by scenarios, printed once.

Scenarios record through the ``scenario_report`` fixture (tests/reliability/conftest.py).
Under pytest-xdist each worker process keeps its own rows and hands them to the
controller when it finishes (:func:`to_worker_output` / :func:`from_worker_output`),
so tests/conftest.py prints one table for the whole run either way.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import pytest

OUTPUT_KEY = "sandrun_reliability_rows"


@dataclass(frozen=True)
class ScenarioRow:
    name: str
    submitted: int
    completed: int
    lost: int
    duplicated: int
    note: str = ""
    broker: str = "redis"


@dataclass
class ScenarioReport:
    """Rows of the end-of-run table, in the order scenarios recorded them."""

    rows: list[ScenarioRow] = field(default_factory=list)

    def record(self, name: str, submitted: int, completed: int, lost: int, duplicated: int,
               *, note: str = "", broker: str = "redis") -> None:
        self.rows.append(ScenarioRow(name, submitted, completed, lost, duplicated, note,
                                     broker))

    def table(self) -> list[str]:
        """The rows, a scenario's brokers side by side (adjacent, in the order first seen)."""
        heads = ("scenario", "broker", "submitted", "completed", "lost", "duplicated", "note")
        names = list(dict.fromkeys(r.name for r in self.rows))
        rows = sorted(self.rows, key=lambda r: names.index(r.name))
        cells = [heads] + [(r.name, r.broker, str(r.submitted), str(r.completed), str(r.lost),
                            str(r.duplicated), r.note) for r in rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(heads))]

        def line(row: tuple[str, ...]) -> str:
            return "  ".join(c.ljust(w) if i in (0, 1, 6) else c.rjust(w)
                             for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()

        return [line(cells[0]), line(tuple("-" * w for w in widths)),
                *(line(row) for row in cells[1:])]


REPORT_KEY = pytest.StashKey[ScenarioReport]()


def to_worker_output(config: pytest.Config, output: dict[str, Any]) -> None:
    """An xdist worker: put this process's rows where the controller reads them."""
    report = config.stash.get(REPORT_KEY, None)
    if report is not None and report.rows:
        output[OUTPUT_KEY] = json.dumps([asdict(row) for row in report.rows])


def from_worker_output(config: pytest.Config, output: dict[str, Any]) -> None:
    """The controller: add the rows a finished xdist worker handed over."""
    rows = output.get(OUTPUT_KEY)
    if rows:
        report = config.stash.setdefault(REPORT_KEY, ScenarioReport())
        report.rows.extend(ScenarioRow(**row) for row in json.loads(rows))
