"""A job's plan and its bubblewrap view: made for a job, and for the warm sandbox that
waits for the next one, from the same arguments (so a warm view is the view a cold
launch builds, :mod:`worker.sandbox.warm`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from worker.models import Job
from worker.sandbox import bwrap, jobdirs, seccomp
from worker.sandbox.isolation import job_user_ids
from worker.sandbox.plan import JobNeeds, Plan, plan_confinement
from worker.sandbox.runspec import SandboxConfig


@dataclass(slots=True)
class Prepared:
    """A job ready to start: its argv, environment and the descriptors bwrap reads."""

    argv: list[str]
    env: dict[str, str]
    fds: list[int]


def view(config: SandboxConfig, root: Path, plan: Plan, argv: list[str], gpu: bool, *,
          read_only: tuple[str, ...] = ()) -> Prepared:
    """bwrap's command running ``argv`` in the job's view, and the descriptors it reads."""
    uid, gid = plan.confinement.user or (os.getuid(), os.getgid())
    gpus = tuple(d for d in plan.confinement.devices if d.startswith(("/dev/nvidia", "/dev/dri")))
    view = bwrap.View(str(root), uid, gid, network=plan.network, tmp_bytes=config.tmp_bytes,
                      shm_bytes=config.tmp_bytes, devices=gpus if gpu else (),
                      read_only=read_only)
    filter_fd = seccomp.filter_fd() if plan.seccomp else None
    cmd = bwrap.command(view, argv, filter_fd)
    return Prepared(cmd.argv, {}, cmd.fds + ([filter_fd] if filter_fd is not None else []))


def plan_for(job: Job | None, config: SandboxConfig, root: Path, slot: jobdirs.Slot | None
          ) -> Plan:
    """The job's plan (``job`` None: the plan of a job that asks for nothing special)."""
    user = (slot.uid, slot.uid) if slot else job_user_ids(config.job_user)
    needs = JobNeeds(job.network, job.isolation == "network") if job else JobNeeds()
    return plan_confinement(str(root), max_processes=config.max_processes,
                            policy=config.policy, user=user, own_uid=slot is not None,
                            needs=needs, support=config.support)
