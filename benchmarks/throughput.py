"""Throughput beside the peers: the same no-op tasks drained by Celery, Sandrun and Dramatiq.

Every system drains the same number of queued no-op tasks (5,000) from one
private ``redis-server``, in turn, for a few rounds that alternate the systems:

* ``celery``: the bare Celery app of ``benchmarks/noop_apps.py`` (``celeryconfig``,
  results stored, ``-l info``);
* ``sandrun``: Sandrun's app (``benchmarks/noop_apps.py``, its task base class) with
  the five built-in plugins: ``retry``, ``metrics`` (not served), ``logging`` (JSON to a
  file, info), ``auth`` (every message signed by the producer, verified with its
  nonce checked by the worker) and ``scheduling`` (defaults);
* ``dramatiq``: a Dramatiq 2 actor (``benchmarks/noop_dramatiq.py``) on its Redis
  broker, its default middleware, no result backend, ``processes x threads``.

A round of one configuration publishes the tasks while no worker runs (so the
producer's cost, signing included, is not timed), starts the worker processes and
times the drain from the moment the first 5 % are done (start-up and first-task
imports are not timed) to the moment the last is acknowledged (Celery: its result
stored too). Over that window it also reads the CPU time of the worker processes
and of Redis, and Redis's command count (less the benchmark's own looks), per task:
where the time goes, steadier than jobs/s on a shared machine. Prints jobs/s per
round, medians per configuration, and ratios of medians measured in this one run:
Sandrun to bare Celery on the same pool, and each system's best configuration to
Dramatiq's best. ``--baseline DIR`` (a checkout of an earlier commit) runs that
code's Sandrun worker beside each Sandrun configuration, for before/after ratios.

Pools: ``prefork 1x2`` is one worker with two pool processes (the default on this
2-core box), ``solo 2x1`` two single-process workers, ``threads PxT`` P workers of T
threads each; Dramatiq ``PxT`` is ``--processes P --threads T`` (2x8 its default; in
a sweep on this box 2x16 and 3x8 were its fastest, more threads than that no faster).

Run: ``.venv/bin/python benchmarks/throughput.py`` (``--quick`` for a short run).
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.sandbox import bench_broker  # noqa: E402
from worker.broker.urls import redis_url  # noqa: E402
from worker.sandbox.launcher import dying_with_parent  # noqa: E402

SECRET = "throughput-benchmark-secret-0123456789"
POLL = 0.005  # seconds between two looks at the queue


@dataclass(frozen=True)
class Config:
    """One way to run one system: ``processes`` worker commands of ``threads`` each."""

    system: str  # celery | sandrun | baseline (Sandrun from --baseline) | dramatiq
    pool: str  # prefork | solo | threads (Celery), or "" (Dramatiq)
    processes: int
    threads: int

    @property
    def label(self) -> str:
        pool = f" {self.pool}" if self.pool else ""
        return f"{self.system}{pool} {self.processes}x{self.threads}"


FULL = [Config("celery", "prefork", 1, 2), Config("sandrun", "prefork", 1, 2),
        Config("celery", "solo", 2, 1), Config("sandrun", "solo", 2, 1),
        Config("celery", "threads", 2, 4), Config("sandrun", "threads", 2, 4),
        Config("dramatiq", "", 2, 1), Config("dramatiq", "", 2, 8),
        Config("dramatiq", "", 2, 16), Config("dramatiq", "", 3, 8)]
QUICK = [FULL[0], FULL[1], FULL[7]]


class Target:
    """How a round publishes its tasks and watches them drain, for one system.

    ``polls`` counts the Redis commands and round trips the watching itself made, so
    that the counts per task exclude them."""

    def __init__(self, client: Any, jobs: int) -> None:
        self.redis, self.jobs = client, jobs
        self.polls = (0, 0)

    def polled(self, commands: int) -> None:
        self.polls = (self.polls[0] + commands, self.polls[1] + 1)

    def fill(self) -> None:
        """Publish ``jobs`` no-op tasks."""
        raise NotImplementedError

    def done(self) -> int:
        """How many of them are finished (acknowledged)."""
        raise NotImplementedError

    def drained(self) -> bool:
        """Every task finished."""
        return self.done() >= self.jobs

    def clear(self) -> None:
        """Forget what the round left in Redis."""


class CeleryTarget(Target):
    """A Celery app's queue: a task is done once acknowledged, with its result stored
    (late acks: the ack follows the result)."""

    def __init__(self, client: Any, jobs: int, app: Any, queue: str,
                 sign: Callable[[Any], None] | None) -> None:
        super().__init__(client, jobs)
        self.app, self.queue, self.sign = app, queue, sign
        self.keys: list[bytes] = []

    def fill(self) -> None:
        from worker.protocol import Publication

        ids = [str(uuid.uuid4()) for _ in range(self.jobs)]
        for task_id in ids:
            publication = Publication(task="bench.noop", task_id=task_id, queue=self.queue,
                                      args=[])
            if self.sign is not None:
                self.sign(publication)
            self.app.send_task(publication.task, args=publication.args,
                               kwargs=publication.kwargs, **publication.options())
        self.keys = [self.app.backend.get_key_for_task(task_id) for task_id in ids]
        queued = self.redis.llen(self.queue)
        if queued != self.jobs:
            raise SystemExit(f"{queued} of {self.jobs} tasks reached queue {self.queue!r}")

    def done(self) -> int:
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen(self.queue)
        pipe.hlen("unacked")
        queued, unacked = pipe.execute()
        self.polled(2)
        return int(self.jobs - queued - unacked)

    def drained(self) -> bool:
        if self.done() < self.jobs:
            return False
        chunks = [self.keys[i:i + 1000] for i in range(0, len(self.keys), 1000)]
        for _ in chunks:
            self.polled(1)
        return sum(self.redis.exists(*chunk) for chunk in chunks) == self.jobs

    def clear(self) -> None:
        for i in range(0, len(self.keys), 1000):
            self.redis.delete(*self.keys[i:i + 1000])


class DramatiqTarget(Target):
    """Dramatiq's queue: a message stays in ``<queue>.msgs`` until it is acknowledged."""

    def fill(self) -> None:
        from benchmarks.noop_dramatiq import QUEUE, noop

        for _ in range(self.jobs):
            noop.send()
        queued = self.redis.llen(f"dramatiq:{QUEUE}")
        if queued != self.jobs:
            raise SystemExit(f"{queued} of {self.jobs} messages reached Dramatiq's queue")

    def done(self) -> int:
        from benchmarks.noop_dramatiq import QUEUE

        self.polled(1)
        return int(self.jobs - self.redis.hlen(f"dramatiq:{QUEUE}.msgs"))


def commands(config: Config) -> list[list[str]]:
    """The worker processes of one configuration."""
    if config.system == "dramatiq":
        return [[sys.executable, "-m", "dramatiq", "benchmarks.noop_dramatiq", "-p",
                 str(config.processes), "-t", str(config.threads)]]
    app = "bare" if config.system == "celery" else "ours"
    return [[sys.executable, "-m", "celery", "-A", f"benchmarks.noop_apps:{app}", "worker",
             "-Q", app, "-P", config.pool, "-c", str(config.threads), "-n", f"{app}{i}@%h",
             "--without-mingle", "--without-gossip", "-l", "info"]
            for i in range(config.processes)]


PLUGINS = ("retry", "metrics", "logging", "auth", "scheduling")


def sandrun_plugins(tmp: Path, names: tuple[str, ...] = PLUGINS) -> list[dict[str, Any]]:
    """The built-in plugins (all five by default), configured as a fleet's worker would be."""
    configs: dict[str, dict[str, Any]] = {
        "metrics": {"port": 0},
        "logging": {"format": "json", "outputs": [str(tmp / "worker.jsonl")]},
        "auth": {"keys": {"k1": SECRET}}}
    return [{"name": name, **({"config": configs[name]} if name in configs else {})}
            for name in names]


@dataclass(frozen=True)
class Sample:
    """One drain: jobs/s, and per timed task the CPU the worker processes and Redis spent,
    the Redis commands sent and the round trips (reads) that carried them, the
    watching's own excluded."""

    rate: float
    worker_ms: float
    redis_ms: float
    commands: float
    trips: float


class Meter:
    """CPU seconds of a set of process groups, and Redis's CPU, commands and reads."""

    def __init__(self, client: Any, groups: list[int]) -> None:
        self.redis, self.groups = client, set(groups)

    def _workers(self) -> float:
        ticks = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                fields = stat.read_text().rpartition(")")[2].split()
                if int(fields[2]) in self.groups:  # pgrp
                    ticks += int(fields[11]) + int(fields[12])  # utime + stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def read(self) -> tuple[float, float, int, int]:
        info = self.redis.info("all")
        return (self._workers(), float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
                int(info["total_commands_processed"]), int(info["total_reads_processed"]))


def drain(config: Config, target: Target, env: dict[str, str], tmp: Path, *, warm: int,
          round_no: int, cwd: Path = ROOT) -> Sample:
    """One round: fill, start the workers, time the drain after ``warm`` tasks."""
    target.fill()
    logs = []
    procs = []
    for i, argv in enumerate(commands(config)):
        log = tmp / f"{config.label.replace(' ', '-')}-{round_no}-{i}.log"
        logs.append(log)
        procs.append(subprocess.Popen(dying_with_parent(argv), env=env, cwd=cwd,
                                      stdout=open(log, "wb"),  # noqa: SIM115
                                      stderr=subprocess.STDOUT, start_new_session=True))
    meter = Meter(target.redis, [p.pid for p in procs])
    try:
        deadline = time.monotonic() + 300

        def wait(condition: Callable[[], bool]) -> float:
            while not condition():
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    tail = "\n".join(log.read_text(errors="replace")[-1500:] for log in logs)
                    raise SystemExit(f"{config.label}: the drain did not finish:\n{tail}")
                time.sleep(POLL)
            return time.perf_counter()

        started = wait(lambda: target.done() >= warm)
        before, polls = meter.read(), target.polls
        finished = wait(target.drained)
        after = meter.read()
        polls = (target.polls[0] - polls[0], target.polls[1] - polls[1])
    finally:
        for proc in procs:
            stop(proc)
        target.clear()
    timed = target.jobs - warm
    # less the polls and the INFO that read the counts
    sent, trips = (after[i] - before[i] - polls[i - 2] - 1 for i in (2, 3))
    return Sample(timed / (finished - started), 1000 * (after[0] - before[0]) / timed,
                  1000 * (after[1] - before[1]) / timed, sent / timed, trips / timed)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a warm shutdown), then the whole process group if it lingers."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def targets(url: str, jobs: int) -> dict[str, Target]:
    """One target per system, all on the private server at ``url``."""
    import redis

    from benchmarks.noop_apps import bare, ours
    from plugins.auth import auth_plugin
    from plugins.auth.tokens import HMACProvider
    from worker import PluginManager

    client = redis.Redis.from_url(redis_url(url))
    signer = auth_plugin(HMACProvider("k1", SECRET), auto_refresh=False)
    PluginManager().load(signer)
    sandrun = CeleryTarget(client, jobs, ours, "ours", signer.sign)
    return {"celery": CeleryTarget(client, jobs, bare, "bare", None), "sandrun": sandrun,
            "baseline": sandrun, "dramatiq": DramatiqTarget(client, jobs)}


def ratio_lines(configs: list[Config], rates: dict[Config, list[float]]) -> list[str]:
    """Sandrun (and the baseline) over bare Celery on the same pool, Sandrun over the
    baseline, then each system's best over Dramatiq's best."""
    medians = {c: statistics.median(rates[c]) for c in configs}

    def ratio(mine: Config, peer: Config) -> str:
        paired = [a / b for a, b in zip(rates[mine], rates[peer], strict=True)]
        return (f"ratio {mine.label} / {peer.label}: {medians[mine] / medians[peer]:.2f} "
                f"(median of per-round ratios {statistics.median(paired):.2f})")

    def same_pool(c: Config, system: str) -> Config | None:
        return next((p for p in configs if p.system == system and
                     (p.pool, p.processes, p.threads) == (c.pool, c.processes, c.threads)), None)

    lines = []
    for c in configs:
        for system in (("celery", "baseline") if c.system == "sandrun" else
                       ("celery",) if c.system == "baseline" else ()):
            peer = same_pool(c, system)
            if peer is not None:
                lines.append(ratio(c, peer))
    best = {s: max((c for c in configs if c.system == s), key=medians.__getitem__, default=None)
            for s in ("celery", "sandrun", "baseline", "dramatiq")}
    dramatiq = best.pop("dramatiq")
    for system, mine in best.items():
        if mine is not None and dramatiq is not None:
            lines.append(f"ratio best {system} ({mine.label}) / best dramatiq "
                         f"({dramatiq.label}): {medians[mine] / medians[dramatiq]:.2f}")
    return lines


def report(configs: list[Config], samples: dict[Config, list[Sample]], *, jobs: int,
           warm: int, plugins: tuple[str, ...]) -> None:
    """Medians per configuration, then the ratios of this run."""
    rates = {c: [s.rate for s in samples[c]] for c in configs}
    print(f"\n{jobs} no-op tasks per round ({jobs - warm} timed), {len(rates[configs[0]])} "
          f"round(s); Sandrun's plugins: {', '.join(plugins) or 'none'}; medians:")
    print(f"{'configuration':<22} {'jobs/s':>7} {'worker CPU':>10} {'Redis CPU':>9} "
          f"{'Redis':>8} {'round':>6}   jobs/s per round")
    print(f"{'':<22} {'':>7} {'ms/task':>10} {'ms/task':>9} {'commands':>8} {'trips':>6}")
    for c in configs:
        cpu, rcpu, cmds, trips = (statistics.median(getattr(s, f) for s in samples[c])
                                  for f in ("worker_ms", "redis_ms", "commands", "trips"))
        print(f"{c.label:<22} {statistics.median(rates[c]):>7.0f} {cpu:>10.3f} {rcpu:>9.3f} "
              f"{cmds:>8.1f} {trips:>6.1f}   " + " ".join(f"{r:.0f}" for r in rates[c]))
    print("", *ratio_lines(configs, rates), sep="\n")


def chosen(opts: argparse.Namespace) -> list[Config]:
    """The configurations to run: ``--only`` over all of them, else the default set; with
    ``--baseline``, the baseline's beside each of Sandrun's."""
    if opts.only is None:
        configs = QUICK if opts.quick else FULL
    else:
        patterns = [p.strip() for p in opts.only.split(",")]
        configs = [c for c in FULL if any(fnmatch.fnmatchcase(c.label, p) for p in patterns)]
    if not configs:
        raise SystemExit(f"no configuration matches {opts.only!r}")
    if opts.baseline is None:
        return configs
    return [x for c in configs for x in
            ((c, replace(c, system="baseline")) if c.system == "sandrun" else (c,))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="500 tasks, one round, three configurations (smoke test)")
    parser.add_argument("--jobs", type=int, default=None, help="tasks per round (5000)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (3)")
    parser.add_argument("--only", default=None,
                        help="globs over configuration labels, comma-separated "
                             "(e.g. 'celery prefork*,sandrun prefork*')")
    parser.add_argument("--plugins", default=",".join(PLUGINS),
                        help="the plugins Sandrun's workers load (all five)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="a checkout of earlier code whose Sandrun worker runs beside")
    opts = parser.parse_args()
    plugins = tuple(p for p in opts.plugins.split(",") if p)
    jobs = opts.jobs or (500 if opts.quick else 5000)
    rounds = opts.rounds or (1 if opts.quick else 3)
    warm = max(10, jobs // 20)
    configs = chosen(opts)
    for name in [k for k in os.environ if k.startswith("SANDRUN_")]:
        del os.environ[name]  # this benchmark configures every app itself
    with tempfile.TemporaryDirectory(prefix="sandrun-throughput-") as tmp_dir:
        tmp = Path(tmp_dir)
        with bench_broker(tmp) as (url, env):
            env["DRAMATIQ_BROKER_URL"] = os.environ["DRAMATIQ_BROKER_URL"] = redis_url(url)
            # Only Sandrun's workers load plugins (the bare app's module imports Sandrun's
            # app too, whose process signals would otherwise load them there as well).
            ours = {**env, "SANDRUN_PLUGINS": json.dumps(sandrun_plugins(tmp, plugins))}
            envs = {"celery": env, "dramatiq": env, "sandrun": ours,
                    "baseline": {**ours, "PYTHONPATH": str(opts.baseline)}}
            by_system = targets(url, jobs)
            samples: dict[Config, list[Sample]] = {c: [] for c in configs}
            print(f"{'round':>5} {'configuration':<22} {'jobs/s':>8}")
            for round_no in range(1, rounds + 1):
                for config in configs:
                    sample = drain(config, by_system[config.system], envs[config.system],
                                   tmp, warm=warm, round_no=round_no,
                                   cwd=opts.baseline if config.system == "baseline" else ROOT)
                    samples[config].append(sample)
                    print(f"{round_no:>5} {config.label:<22} {sample.rate:>8.0f}", flush=True)
            report(configs, samples, jobs=jobs, warm=warm, plugins=plugins)


if __name__ == "__main__":
    main()
