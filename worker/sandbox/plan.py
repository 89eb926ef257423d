"""Which confinement one job gets (:func:`plan_confinement`): what the operator demands
(:class:`Policy`, from ``SANDRUN_*`` settings), the job's user and what this host offers
(:func:`worker.sandbox.isolation.probe`, measured, not assumed).

Each layer is ``auto`` by default: used where the host has it, named in the
result's ``isolation`` label when it applies, and reported in the worker's
start-up notes when it does not. ``required`` refuses the job
(``isolation_unavailable``) where the host cannot give it; ``off`` never uses it.
The layers, strongest first:

* ``view``: bubblewrap builds the job's root (:mod:`worker.sandbox.bwrap`); it
  brings its own user, PID, mount and (unless allowed) network namespaces. Where
  it is missing, the job keeps the host's root, confined by Landlock (writes only
  beneath its directory) and a user namespace of its own (:mod:`worker.sandbox.confine`).
* ``uid``: a uid of its own (:mod:`worker.sandbox.jobdirs`).
* ``network``: an empty network namespace.
* ``seccomp``: the filter of :mod:`worker.sandbox.seccomp` (needs the view: bwrap
  loads it).
* ``cgroup``: the memory limit is resident memory (:mod:`worker.sandbox.cgroups`);
  otherwise ``RLIMIT_AS``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from worker.sandbox.confine import SHM_BYTES, Confinement
from worker.sandbox.isolation import HostSupport, IsolationUnavailable, probe, writable_devices

#: Processes bubblewrap itself adds to a job's count (its outer process and pid 1).
BWRAP_PROCESSES = 2
MODES = ("auto", "required", "off")


@dataclass(frozen=True, slots=True)
class Policy:
    """What the operator demands of each layer: ``auto`` (where the host has it),
    ``required`` (refuse jobs where it does not) or ``off``."""

    filesystem: str = "auto"
    network: str = "auto"
    seccomp: str = "auto"
    cgroups: str = "auto"
    allow_job_network: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    """How one job is confined: the child's steps before exec, and the layers around it."""

    confinement: Confinement
    view: bool  # run through bubblewrap
    network: bool  # the job may use the network
    seccomp: bool
    cgroup: bool
    isolation: str  # the result's label: process+uid+pids+filesystem+view+network+...


@dataclass(frozen=True, slots=True)
class JobNeeds:
    """What the job itself asks of the sandbox."""

    network: bool = False  # Job.network: it needs the network
    network_isolation: bool = False  # Job.isolation == "network": it demands none


def _use(mode: str, offered: bool, setting: str, missing: str) -> bool:
    """Whether a layer is used; IsolationUnavailable when it is required and missing."""
    if mode not in MODES:
        raise ValueError(f"{setting} must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "required" and not offered:
        raise IsolationUnavailable(f"{setting} is 'required', but {missing}; fix the host, "
                                   f"or set {setting}=auto to run jobs without it")
    return mode != "off" and offered


def _network(policy: Policy, needs: JobNeeds, offered: bool) -> bool:
    """Whether the job is cut off from the network (True) or keeps it (False)."""
    if needs.network:
        if not policy.allow_job_network:
            raise IsolationUnavailable("the job asks for network access, which this worker "
                                       "does not allow (SANDRUN_ALLOW_JOB_NETWORK is off)")
        if needs.network_isolation:
            raise IsolationUnavailable("the job asks for network access and for network "
                                       "isolation at once; drop one of them")
        return False
    mode = "required" if needs.network_isolation and policy.network != "off" else policy.network
    if needs.network_isolation and policy.network == "off":
        raise IsolationUnavailable("the job demands network isolation, which this worker does "
                                   "not give (SANDRUN_NETWORK_ISOLATION is off)")
    return _use(mode, offered, "SANDRUN_NETWORK_ISOLATION",
                "this host cannot give jobs an empty network namespace")


def plan_confinement(root: str, *, max_processes: int, policy: Policy,
                     user: tuple[int, int] | None, own_uid: bool = False,
                     needs: JobNeeds = JobNeeds(), support: HostSupport | None = None) -> Plan:
    """How to confine a job whose directory is ``root``, running as ``user`` (None: the
    worker's user); ``own_uid`` when no other job runs as that uid meanwhile.

    Raises IsolationUnavailable when the policy or the job demand what the host lacks."""
    support = support or probe(user)
    view = _use(policy.filesystem, support.view, "SANDRUN_FILESYSTEM_ISOLATION",
                "bubblewrap cannot build a filesystem view here")
    landlock_on = not view and policy.filesystem != "off" and support.landlock_abi > 0
    isolated = _network(policy, needs, support.network)
    filter_on = _use(policy.seccomp, support.seccomp and view, "SANDRUN_SECCOMP",
                     "no seccomp filter can be loaded here (it needs libseccomp and the "
                     "filesystem view)")
    cgroup = _use(policy.cgroups, support.cgroup is not None, "SANDRUN_CGROUPS",
                  "no memory cgroup is delegated to this worker")
    per_job = view or support.process_limit == "per-job" or (own_uid and user is not None)
    labels = ["process", "uid" if own_uid and user is not None else "",
              "pids" if per_job and support.process_limit != "none" else "",
              "filesystem" if view or landlock_on else "", "view" if view else "",
              "network" if isolated else "", "seccomp" if filter_on else "",
              "cgroup" if cgroup else ""]
    shm = SHM_BYTES if landlock_on and support.user_namespaces and os.path.isdir("/dev/shm") \
        else 0
    confinement = Confinement(
        max_processes + (BWRAP_PROCESSES if view else 0), user,
        user_namespace=support.user_namespaces and not view, network=isolated and not view,
        writable=(root,) if landlock_on else (), devices=writable_devices(),
        landlock_abi=support.landlock_abi if landlock_on else 0, shm_bytes=shm,
        exact_processes=view or (own_uid and user is not None), oom_adjust=cgroup)
    return Plan(confinement, view, not isolated, filter_on, cgroup,
                "+".join(label for label in labels if label))
