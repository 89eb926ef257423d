"""The sandbox as the settings configure it, checked once when a worker starts.

Why a start-up check: a worker that would refuse every job (a ``required`` layer
the host lacks, a job user that does not exist) should fail at once with the
reason, not accept jobs and fail each. The same check yields the isolation label
and the host's notes that ``sandrun worker`` prints when it starts.
"""

from __future__ import annotations

import os
from pathlib import Path

from worker.sandbox import cgroups, jobdirs
from worker.sandbox.isolation import job_user_ids, probe
from worker.sandbox.jobdirs import UidRange
from worker.sandbox.plan import Policy, plan_confinement
from worker.sandbox.prepare import DEFAULT_INTERPRETERS
from worker.sandbox.runspec import SandboxConfig
from worker.settings import Settings


def sandbox_config(settings: Settings) -> SandboxConfig:
    """The executor's configuration from the ``SANDRUN_*`` settings."""
    return SandboxConfig(
        stream_cap_bytes=settings.stream_cap_bytes,
        live_output_bytes=settings.live_output_bytes,
        output_file_cap_bytes=settings.output_file_cap_bytes,
        output_total_cap_bytes=settings.output_total_cap_bytes,
        output_max_files=settings.output_max_files,
        output_max_depth=settings.output_max_depth,
        interpreters=frozenset(settings.interpreters or DEFAULT_INTERPRETERS),
        workdir_root=str(settings.workdir_root) if settings.workdir_root else None,
        max_processes=settings.max_processes,
        policy=Policy(settings.filesystem_isolation, settings.network_isolation,
                      settings.seccomp, settings.cgroups, settings.allow_job_network),
        job_user=settings.job_user, job_uids=settings.job_uids.strip() or None,
        disk_bytes=settings.job_disk_mb << 20, tmp_bytes=settings.job_tmp_mb << 20,
        environments_dir=_path(settings.environments_dir),
        wheel_cache=_path(settings.wheel_cache), layers_dir=_path(settings.layers_dir))


def _path(path: Path | None) -> str | None:
    return str(path) if path else None


def check_sandbox(config: SandboxConfig) -> tuple[str, tuple[str, ...]]:
    """The isolation every job will get here and the host's notes on what it lacks;
    IsolationError (a ConfigurationError at start-up) when jobs could not run at all."""
    own = bool(config.job_uids) and os.geteuid() == 0
    if own:
        first = UidRange.parse(str(config.job_uids)).first
        user: tuple[int, int] | None = (first, first)
    else:
        user = job_user_ids(config.job_user)
    if own:  # what pool processes of a worker killed earlier left behind
        jobdirs.sweep(jobdirs.jobs_root(config.workdir_root))
    if config.policy.cgroups != "off" and cgroups.probe().memory_root:
        cgroups.sweep_stale()
    support = config.support or probe(user)
    plan = plan_confinement(str(config.workdir_root or "/tmp"),
                            max_processes=config.max_processes, policy=config.policy,
                            user=user, own_uid=own, support=support)
    return plan.isolation, support.notes
