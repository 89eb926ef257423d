"""Dispatch cost of ``PluginManager.execute_hook`` against pluggy, side by side.

For 1, 5 and 20 plugins, each implementing ``on_submit(job, context)``, times one
hook call through our manager and through pluggy calling equivalent
implementations, in alternating rounds in this one process, and prints the
median nanoseconds per call and the ratio to pluggy. Two shapes:

* observe: every implementation returns None (data unchanged);
* transform: every implementation returns its input (data replaced each time).

``--declared``: our plugins declare a manifest granting only ``job:transform``, so
each handler also runs behind the permission machinery a restricted plugin pays for
(secrets hidden, the network marker set); by default they declare nothing and hold
every permission, the path of the built-in-free plugin chains above.

Run: ``.venv/bin/python benchmarks/hooks.py`` (``--quick`` for a short run).
"""

from __future__ import annotations

import argparse
import statistics
import timeit
from collections.abc import Callable
from typing import Any

import pluggy

from worker import Job, Plugin, PluginManager, PluginManifest, SubmissionContext
from worker.logs import configure_logging

hookspec = pluggy.HookspecMarker("bench")
hookimpl = pluggy.HookimplMarker("bench")


class Spec:
    @hookspec
    def on_submit(self, job: Any, context: Any) -> Any:
        """The same hook, declared for pluggy."""


def make_pluggy(n: int, transform: bool) -> Callable[[Any, Any], Any]:
    pm = pluggy.PluginManager("bench")
    pm.add_hookspecs(Spec)
    for i in range(n):
        if transform:
            impl = type(f"T{i}", (), {"on_submit": hookimpl(lambda self, job, context: job)})
        else:
            impl = type(f"O{i}", (), {"on_submit": hookimpl(lambda self, job, context: None)})
        pm.register(impl(), name=f"p{i}")
    call = pm.hook.on_submit
    return lambda job, context: call(job=job, context=context)


def make_ours(n: int, transform: bool, declared: bool = False) -> Callable[[Any, Any], Any]:
    manager = PluginManager()
    for i in range(n):
        body: Callable[..., Any] = ((lambda self, job, context: job) if transform
                                    else (lambda self, job, context: None))
        attrs: dict[str, Any] = {"name": f"p{i}", "on_submit": body}
        if declared:
            attrs["manifest"] = PluginManifest(apis=["on_submit"], permissions=["job:transform"])
        manager.load(type(f"P{i}", (Plugin,), attrs))
    execute = manager.execute_hook
    return lambda job, context: execute("on_submit", job, context)


def per_call_ns(fn: Callable[[Any, Any], Any], job: Job, ctx: SubmissionContext,
                number: int) -> float:
    return timeit.timeit(lambda: fn(job, ctx), number=number) / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke test)")
    parser.add_argument("--declared", action="store_true",
                        help="plugins declare only job:transform (restricted plugins)")
    opts = parser.parse_args()
    configure_logging("warning")
    rounds, number = (3, 2_000) if opts.quick else (15, 20_000)
    job, ctx = Job(code="print(1)"), SubmissionContext(producer="bench")
    print(f"{'shape':<10}{'plugins':>8}{'sandrun ns':>12}{'pluggy ns':>11}{'ratio':>8}")
    for transform in (False, True):
        for n in (1, 5, 20):
            ours, theirs = make_ours(n, transform, opts.declared), make_pluggy(n, transform)
            a: list[float] = []
            b: list[float] = []
            for _ in range(rounds):
                a.append(per_call_ns(ours, job, ctx, number))
                b.append(per_call_ns(theirs, job, ctx, number))
            ma, mb = statistics.median(a), statistics.median(b)
            shape = "transform" if transform else "observe"
            print(f"{shape:<10}{n:>8}{ma:>12.0f}{mb:>11.0f}{ma / mb:>8.2f}")


if __name__ == "__main__":
    main()
