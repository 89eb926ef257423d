"""``sandrun demo``: the README's first command, end to end on this machine.

Starts the broker (the embedded default when ``SANDRUN_BROKER_URL`` is unset)
and ``--workers`` Celery worker processes, submits every example job in
``examples/jobs`` through a client with the demo plugins, shows progress and a
table of results, downloads one output, and shuts everything down. It exits
non-zero when a job did not end the way the example is meant to end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from worker.broker.embedded import embedded_running, ensure_broker_configured, stop_redis
from worker.cli.plugins import print_plan
from worker.client.client import JobExecution, Sandrun
from worker.errors import ConfigurationError, SubmissionRejected
from worker.models import Job, JobResult
from worker.models.jobdir import manifest_fields
from worker.sandbox.launcher import dying_with_parent
from worker.settings import load_settings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEMO_PLUGINS = [
    {"name": "defaults", "config": {"labels": {"team": "demo"}}},
    {"name": "quota:QuotaPlugin", "config": {"max_memory_mb": 1024}},
]
#: How each example is meant to end (outcome); the others complete.
EXPECTED = {"fails": "failed", "times-out": "timeout", "memory-hog": "memory_limit",
            "gpu-training": "rejected at submit"}


def _start_workers(count: int, logs: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(1, count + 1):
        log = open(logs / f"demo-worker-{i}.log", "wb")  # noqa: SIM115 (closed with the process)
        procs.append(subprocess.Popen(dying_with_parent(
            [sys.executable, "-m", "celery", "-A", "worker", "worker", "-c", "1",
             "-n", f"demo{i}@%h", "--without-mingle", "--without-gossip", "-l", "warning"]),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    return procs


def _stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _skip_reason(job: Job) -> str | None:
    if job.interpreter and shutil.which(job.interpreter) is None:
        return f"skipped: {job.interpreter} is not installed"
    return None


def _submit_all(client: Sandrun) -> dict[str, JobExecution | str]:
    runs: dict[str, JobExecution | str] = {}
    for job_dir in sorted(p for p in (EXAMPLES / "jobs").iterdir() if p.is_dir()):
        builder = client.job().with_fields(manifest_fields(job_dir))
        reason = _skip_reason(builder.build())
        if reason:
            runs[job_dir.name] = reason
            continue
        try:
            runs[job_dir.name] = builder.submit()
        except SubmissionRejected as exc:
            runs[job_dir.name] = f"rejected at submit: {exc}"
    return runs


def _describe(res: JobResult) -> str:
    if res.outcome == "failed" and res.exit_code is not None:
        return f"failed (exit {res.exit_code})"
    return res.status if res.outcome == res.status else f"{res.status}: {res.outcome}"


def _table(outcomes: dict[str, JobResult | str]) -> Table:
    table = Table(title="Example jobs")
    for column in ("job", "result", "time", "peak MB", "outputs", "last line of stdout"):
        table.add_column(column, overflow="fold")
    for name, res in outcomes.items():
        if isinstance(res, str):
            table.add_row(name, res, "", "", "", "")
            continue
        peak = f"{res.memory_peak_bytes / 2**20:.0f}" if res.memory_peak_bytes else "-"
        table.add_row(name, _describe(res), f"{res.execution_time or 0:.2f}s", peak,
                      str(len(res.outputs)), (res.stdout.strip().splitlines() or [""])[-1])
    return table


def _as_expected(name: str, res: JobResult | str) -> bool:
    want = EXPECTED.get(name, "completed")
    if isinstance(res, str):
        return res.startswith(want) or res.startswith("skipped")
    return res.outcome == want


def _wait(runs: dict[str, JobExecution | str], console: Console) -> dict[str, JobResult | str]:
    outcomes: dict[str, JobResult | str] = {}
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("running example jobs", total=len(runs))
        for name, run in runs.items():
            outcomes[name] = run if isinstance(run, str) else run.wait(timeout=180)
            progress.advance(bar)
    return outcomes


def run_demo(console: Console, workers: int = 2) -> int:
    """Run the demo; return the process exit code."""
    if not (EXAMPLES / "jobs").is_dir():
        raise ConfigurationError(f"{EXAMPLES / 'jobs'} not found; run the demo from a source "
                                 "checkout of sandrun")
    settings = load_settings()
    os.environ.setdefault("SANDRUN_PLUGINS", json.dumps(DEMO_PLUGINS))
    plugin_path = str(EXAMPLES / "plugins")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [plugin_path,
                                                             os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, plugin_path)
    own_broker = "SANDRUN_BROKER_URL" not in os.environ and not embedded_running(
        settings.state_dir)
    ensure_broker_configured()
    console.print(f"broker: {os.environ['SANDRUN_BROKER_URL']}", highlight=False)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    procs = _start_workers(workers, settings.state_dir)
    try:
        with Sandrun.create() as client:
            print_plan(client.manager)
            outcomes = _wait(_submit_all(client), console)
            console.print(_table(outcomes))
            report = outcomes.get("python-outputs")
            if isinstance(report, JobResult) and report.status == "completed":
                data = client.execution(report.id).download("report.txt", settings.state_dir)
                console.print(f"downloaded report.txt: {data.read_text().strip()}",
                              highlight=False)
    finally:
        _stop_workers(procs)
        if own_broker:
            stop_redis(settings.state_dir)
    wrong = [name for name, res in outcomes.items() if not _as_expected(name, res)]
    if wrong:
        console.print(f"[red]unexpected outcome for {', '.join(wrong)}[/]; worker logs are in "
                      f"{settings.state_dir}")
        return 1
    console.print("every example ended as intended; workers stopped.")
    return 0
