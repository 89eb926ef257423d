"""What signing and verifying a job costs, against what a producer does anyway.

In alternating rounds in this one process, times per job:

* baseline: turning a Job into the published body (``model_dump``, which every
  submit does) and computing its canonical digest's JSON, i.e. the unsigned path;
* sign: the baseline plus the auth plugin's ``on_publish`` (HS256 JWS over the body,
  on a copy of the message);
* verify: the worker's check of that signature (without the nonce round trip,
  which is one Redis INCR in the same pipeline as the task's own reads).

Prints medians in microseconds and the ratio to the baseline, and the absolute
sign + verify cost beside the ~3 ms round trip of a no-op task
(``benchmarks/overhead.py``).

Run: ``.venv/bin/python benchmarks/auth.py`` (``--quick`` for a short run).
"""

from __future__ import annotations

import argparse
import statistics
import time
import timeit
from collections.abc import Callable

from plugins.auth import AuthPlugin, auth_plugin
from plugins.auth.signing import AUTH_HEADER, Keyring, Message, verify
from plugins.auth.tokens import HMACProvider
from worker import Job, PluginManager, PublishContext
from worker.logs import configure_logging
from worker.protocol import Publication

SECRET = "benchmark-secret-0123456789abcdefghij"


def publication(job: Job) -> Publication:
    return Publication(task="sandrun.run_job", task_id=job.id, queue="sandrun",
                       args=[job.model_dump(mode="json", exclude_defaults=True)])


def measure(fn: Callable[[], object], number: int, rounds: int) -> list[float]:
    return [timeit.timeit(fn, number=number) / number * 1e6 for _ in range(rounds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    quick = parser.parse_args().quick
    number, rounds = (200, 3) if quick else (2000, 15)
    configure_logging("error")
    plugin: AuthPlugin = auth_plugin(HMACProvider("k1", SECRET), auto_refresh=False)
    PluginManager().load(plugin)
    job = Job(code="print(sum(range(10)))", args=["a", "b"], env={"X": "1"}, timeout=30)
    context = PublishContext(job=job)
    signed = plugin.on_publish(publication(job), context)
    keyring = Keyring({"k1": SECRET})
    message = Message(signed.task, signed.task_id, signed.queue, signed.args, {}, signed.headers)

    def baseline() -> None:
        publication(job)

    def sign() -> None:
        plugin.on_publish(publication(job), context)

    def check() -> None:
        verify(signed.headers[AUTH_HEADER], message, keyring, now=time.time(), leeway=5,
               max_ttl=86400)

    results: dict[str, list[float]] = {"baseline": [], "sign": [], "verify": []}
    for _ in range(rounds):
        for name, fn in (("baseline", baseline), ("sign", sign), ("verify", check)):
            results[name] += measure(fn, number, 1)
    base = statistics.median(results["baseline"])
    print(f"{'step':10} {'us/job':>8} {'ratio':>7}")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:10} {median:8.1f} {median / base:7.2f}")
    cost = statistics.median(results["sign"]) - base + statistics.median(results["verify"])
    print(f"sign + verify add {cost:.0f} us per job ({cost / 3000:.1%} of a 3 ms round trip)")


if __name__ == "__main__":
    main()
