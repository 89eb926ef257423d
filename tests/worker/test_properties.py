"""Property-based tests (hypothesis): parsing never fails with an unexpected exception
type, and the manager's ordering and chaining invariants hold for random plugin sets."""

from __future__ import annotations

import string
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from worker import Job, Plugin, PluginDependency, PluginManager, SubmissionContext
from worker.errors import DependencyError, InvalidJob

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.text(max_size=10), children, max_size=4), max_leaves=12)
FIELDS = ["entrypoint", "interpreter", "args", "env", "outputs", "timeout", "memory_mb",
          "cpu_seconds", "gpu", "requirements", "environment", "code", "files", "payment",
          "priority", "labels", "queue", "consensus", "id"]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=8))
def test_job_parsing_raises_only_validation_errors(data: dict[str, Any]) -> None:
    try:
        job = Job.model_validate(data)
    except ValidationError:
        return
    assert Job.model_validate_json(job.model_dump_json()) == job


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=8),
       st.dictionaries(st.text(string.ascii_letters + "/._", min_size=1, max_size=12),
                       st.text(max_size=20), max_size=3))
def test_manifest_parsing_raises_only_invalid_job(data: dict[str, Any],
                                                 files: dict[str, str]) -> None:
    try:
        job = Job.from_manifest(data, files=files)
    except InvalidJob as exc:
        assert exc.problems and all(field and rule for field, rule in exc.problems)
        return
    assert job.entrypoint in job.files


def make(name: str, priority: int, deps: list[str]) -> Plugin:
    def on_submit(self: Plugin, job: Job, context: SubmissionContext) -> Job:
        return job.replace(args=[*job.args, name])

    cls = type(f"P_{name}", (Plugin,), {
        "name": name, "priority": priority, "on_submit": on_submit,
        "dependencies": tuple(PluginDependency(d) for d in deps)})
    return cls()  # type: ignore[no-any-return]


@st.composite
def plugin_sets(draw: st.DrawFn) -> list[tuple[str, int, list[str]]]:
    names = draw(st.lists(st.sampled_from(list("abcdefgh")), min_size=1, max_size=8,
                          unique=True))
    return [(n, draw(st.integers(-3, 3)),
             draw(st.lists(st.sampled_from(names), max_size=2, unique=True))) for n in names]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plugin_sets())
def test_manager_orders_by_priority_then_load_order_and_chains(
        specs: list[tuple[str, int, list[str]]]) -> None:
    manager = PluginManager()
    try:
        manager.load_all([make(n, p, [d for d in deps if d != n]) for n, p, deps in specs])
    except DependencyError as exc:
        assert any("cycle" in p for p in exc.problems)
        assert manager.loaded() == []
        return
    loaded = [p.checked.name for p in manager.loaded()]
    position = {name: i for i, name in enumerate(loaded)}
    for name, _, deps in specs:
        assert all(position[d] < position[name] for d in deps if d != name)
    priority = {n: p for n, p, _ in specs}
    expected = sorted(loaded, key=lambda n: (-priority[n], position[n]))
    assert [e.plugin for e in manager.hook_plan()["on_submit"]] == expected
    out = manager.execute_hook("on_submit", Job(code="1"), SubmissionContext())
    assert out.args == expected
