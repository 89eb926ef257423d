"""A producer in its own process, for a test host: ``python -m tests.support.producer``.

The fleet's own client submits over a unix socket, which no link fault reaches; a
scenario about publishing runs this inside a host (``Host.command``) so that its
publishes cross that host's link to the broker host. It submits ``COUNT`` ledger jobs
(the code read from ``CODE_FILE``), ``PAUSE`` seconds apart, and writes one JSON line
per submit to ``OUT`` as it returns (flushed, so the test can follow the loop):
``{"job": id, "outcome": "accepted" | "unavailable" | "<other error>", "sent": time,
"at": time}`` (``time.time()`` when the submit began and when it returned).
Only :class:`~worker.errors.BrokerUnavailable` is "unavailable": anything else a
submit raises is written as what it is, and the scenario fails on it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from worker.client.client import Sandrun
from worker.errors import BrokerUnavailable


def main(url: str, code_file: str, count: int, pause: float, out: str) -> None:
    code = Path(code_file).read_text()
    client = Sandrun.create(broker_url=url, result_backend=url, plugins=[])
    with open(out, "a", encoding="utf-8") as fh:
        for _ in range(count):
            job = client.job().code(code).timeout(20).build()
            sent = time.time()
            try:
                client.submit(job)
                outcome = "accepted"
            except BrokerUnavailable:
                outcome = "unavailable"
            except Exception as exc:  # reported to the test, which fails on it
                outcome = f"{type(exc).__name__}: {exc}"[:300]
            fh.write(json.dumps({"job": job.id, "outcome": outcome, "sent": sent,
                                 "at": time.time()}) + "\n")
            fh.flush()
            time.sleep(pause)
        fh.write(json.dumps({"done": True}) + "\n")
    client.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
