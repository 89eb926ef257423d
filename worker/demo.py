"""``sandrun demo``: load plugins, show the hook plan, push the example jobs through
the producer-side hooks (``on_build``, ``on_submit``) and show what came out.

The plugins are ``SANDRUN_PLUGINS`` when set, otherwise the built-in ``defaults``
plugin and the example ``quota`` plugin from ``examples/plugins``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from worker.builder import JobBuilder
from worker.cli import configured_specs, print_plan
from worker.context import BuildContext, SubmissionContext
from worker.errors import ConfigurationError, SubmissionRejected
from worker.loader import PluginSpec
from worker.manager import PluginManager
from worker.manifest import manifest_fields
from worker.models import Job

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEMO_PLUGINS = [
    PluginSpec("defaults", {"labels": {"team": "demo"}, "timeout": 120}),
    PluginSpec("quota:QuotaPlugin", {"max_memory_mb": 1024}),
]


def submit_example(manager: PluginManager, job_dir: Path) -> tuple[Job, str]:
    """Build a job from ``job_dir`` through on_build and on_submit; return it and its fate."""
    builder: JobBuilder[None] = JobBuilder(manifest_fields(job_dir))
    builder = manager.execute_hook("on_build", builder, BuildContext(client="demo"))
    job = builder.build()
    try:
        job = manager.execute_hook("on_submit", job, SubmissionContext(producer="demo",
                                                                       job_id=job.id))
    except SubmissionRejected as exc:
        return job, f"rejected: {exc}"
    return job, "accepted"


def run_demo(console: Console) -> None:
    """Run the demo end to end, printing to ``console``."""
    if not (EXAMPLES / "jobs").is_dir():
        raise ConfigurationError(f"{EXAMPLES / 'jobs'} not found; run the demo from a source "
                                 "checkout of sandrun")
    sys.path.insert(0, str(EXAMPLES / "plugins"))
    manager = PluginManager()
    manager.load_all(configured_specs() or DEMO_PLUGINS)
    print_plan(manager)
    table = Table(title="Example jobs through on_build -> on_submit")
    for column in ("job", "interpreter", "timeout", "memory", "labels", "outcome"):
        table.add_column(column)
    for job_dir in sorted(p for p in (EXAMPLES / "jobs").iterdir() if p.is_dir()):
        job, outcome = submit_example(manager, job_dir)
        table.add_row(job_dir.name, job.interpreter, f"{job.timeout:g}s", f"{job.memory_mb} MB",
                      ", ".join(f"{k}={v}" for k, v in job.labels.items()) or "-", outcome)
    console.print(table)
    if "quota" in manager:
        storage = manager.storage.for_plugin("quota")
        counts = {key: storage.get(key) for key in storage.keys("accepted:*")}
        console.print(f"quota plugin storage: {counts}")
    console.print("Jobs were built and vetted by the producer-side hooks only; "
                  "nothing was executed.")
    manager.close()
