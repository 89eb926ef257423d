"""Which layers a job gets: the operator's policy, the job's needs and the host's offer."""

from __future__ import annotations

import os
import re

import pytest

from worker.sandbox.confine import SHM_BYTES
from worker.sandbox.isolation import HostSupport, IsolationUnavailable
from worker.sandbox.plan import BWRAP_PROCESSES, JobNeeds, Plan, Policy, plan_confinement

USER = (200001, 200001)
EVERYTHING = HostSupport(user_namespaces=True, network=True, landlock_abi=6,
                         process_limit="per-job", view=True, seccomp=True, cgroup="v1")
NO_VIEW = HostSupport(user_namespaces=True, network=True, landlock_abi=6,
                      process_limit="per-job")
NOTHING = HostSupport(user_namespaces=False, network=False, landlock_abi=0,
                      process_limit="shared", notes=("no network namespaces (EPERM)",))


def plan(policy: Policy | None = None, support: HostSupport = EVERYTHING,
         needs: JobNeeds | None = None, own_uid: bool = True) -> Plan:
    return plan_confinement("/jobs/1", max_processes=64, policy=policy or Policy(), user=USER,
                            own_uid=own_uid, needs=needs or JobNeeds(), support=support)


def test_a_host_with_everything_gives_every_layer_by_default() -> None:
    p = plan()
    assert p.isolation == "process+uid+pids+filesystem+view+network+seccomp+cgroup"
    assert (p.view, p.network, p.seccomp, p.cgroup) == (True, False, True, True)
    c = p.confinement
    assert c.max_processes == 64 + BWRAP_PROCESSES and c.exact_processes and c.oom_adjust
    assert c.user == USER and not c.user_namespace and not c.network  # bwrap makes them
    assert c.writable == () and c.landlock_abi == 0


def test_without_a_view_landlock_and_a_user_namespace_confine_the_job() -> None:
    p = plan(support=NO_VIEW)
    assert p.isolation == "process+uid+pids+filesystem+network"
    c = p.confinement
    assert c.user_namespace and c.network and c.writable == ("/jobs/1",)
    assert c.landlock_abi == 6 and c.max_processes == 64
    assert c.shm_bytes == (SHM_BYTES if os.path.isdir("/dev/shm") else 0)


def test_layers_switched_off_are_not_used() -> None:
    p = plan(Policy(filesystem="off", network="off", seccomp="off", cgroups="off"))
    assert p.isolation == "process+uid+pids" and p.network and not p.view
    assert plan(support=NOTHING, own_uid=False).isolation == "process"


def test_a_job_may_use_the_network_only_where_the_operator_allows_it() -> None:
    with pytest.raises(IsolationUnavailable, match="SANDRUN_ALLOW_JOB_NETWORK is off"):
        plan(needs=JobNeeds(network=True))
    p = plan(Policy(allow_job_network=True), needs=JobNeeds(network=True))
    assert p.network and "network" not in p.isolation.split("+")
    with pytest.raises(IsolationUnavailable, match="drop one of them"):
        plan(Policy(allow_job_network=True), needs=JobNeeds(True, True))


@pytest.mark.parametrize(("policy", "needs", "reason"), [
    (Policy(filesystem="required"), JobNeeds(), "SANDRUN_FILESYSTEM_ISOLATION is 'required'"),
    (Policy(network="required"), JobNeeds(), "SANDRUN_NETWORK_ISOLATION is 'required'"),
    (Policy(), JobNeeds(network_isolation=True), "SANDRUN_NETWORK_ISOLATION is 'required'"),
    (Policy(network="off"), JobNeeds(network_isolation=True), "SANDRUN_NETWORK_ISOLATION is off"),
    (Policy(seccomp="required"), JobNeeds(), "SANDRUN_SECCOMP is 'required'"),
    (Policy(cgroups="required"), JobNeeds(), "SANDRUN_CGROUPS is 'required'"),
])
def test_the_plan_refuses_what_the_host_lacks(policy: Policy, needs: JobNeeds,
                                              reason: str) -> None:
    with pytest.raises(IsolationUnavailable, match=re.escape(reason)):
        plan(policy, NOTHING, needs)


def test_a_bad_mode_names_the_setting() -> None:
    with pytest.raises(ValueError, match="SANDRUN_SECCOMP must be one of auto, required, off"):
        plan(Policy(seccomp="yes"))
