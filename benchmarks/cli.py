"""How long ``sandrun`` commands take, each run as a whole process (start-up included).

Each command runs 20 times (``--rounds``) as its own process, the way a person
or a script runs it: the bare interpreter (the floor), ``sandrun --help``,
``sandrun probe live``, ``sandrun plugins list``, ``python -c 'import worker'``,
and ``sandrun submit --code 'print(1)' --wait`` against one idle ``celery -A
worker worker -c 1`` on a private ``redis-server`` (the helpers of
``benchmarks/sandbox.py``). Prints min/median/max per command.

With ``--baseline DIR`` (a checkout of earlier code; repeatable) the same
commands also run from that checkout with this interpreter, alternating run by
run with this tree so that both meet the same machine load; each checkout gets
its own worker, queue and state directory. Byte code goes to a private
``PYTHONPYCACHEPREFIX`` (written even where ``PYTHONDONTWRITEBYTECODE`` is set),
so a checkout is never written to and every tree pays its compilation once, in
the warm-up run.

Run: ``.venv/bin/python benchmarks/cli.py [--baseline /path/to/old/checkout]``
(``--quick`` for a short run).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.sandbox import bench_broker, start, stop  # noqa: E402

#: What the ``sandrun`` console script runs (pyproject.toml ``[project.scripts]``).
SANDRUN = "import sys; from worker.cli import main; sys.argv[0] = 'sandrun'; sys.exit(main())"
COMMANDS: dict[str, list[str]] = {
    "python -c pass (the floor)": ["-c", "pass"],
    "sandrun --help": ["-c", SANDRUN, "--help"],
    "sandrun probe live": ["-c", SANDRUN, "probe", "live"],
    "sandrun plugins list": ["-c", SANDRUN, "plugins", "list"],
    "python -c 'import worker'": ["-c", "import worker"],
    "sandrun submit --code 'print(1)' --wait": ["-c", SANDRUN, "submit", "--code", "print(1)",
                                                "--wait"],
}


@dataclass
class Tree:
    """A checkout whose commands are timed: its directory and the environment they get."""

    name: str
    root: Path
    env: dict[str, str]


def run(tree: Tree, argv: list[str]) -> float:
    """Seconds one command takes from fork to exit; a failing command stops the benchmark."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], cwd=tree.root, env=tree.env,
                          capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{tree.name}: {argv[2:] or argv} exited {done.returncode}:\n"
                         f"{done.stdout.decode()[-1000:]}{done.stderr.decode()[-2000:]}")
    return elapsed


def check_source(tree: Tree) -> None:
    """Make sure the tree's commands import the tree's own ``worker``, not the installed one."""
    found = subprocess.run([sys.executable, "-c", "import worker; print(worker.__file__)"],
                           cwd=tree.root, env=tree.env, capture_output=True, text=True,
                           check=True).stdout.strip()
    if not Path(found).is_relative_to(tree.root):
        raise SystemExit(f"{tree.name} imports worker from {found}, not from {tree.root}")


def summary(samples: list[float]) -> str:
    low, mid, high = min(samples), statistics.median(samples), max(samples)
    return f"min {low:6.3f} s   median {mid:6.3f} s   max {high:6.3f} s"


def measure(trees: list[Tree], rounds: int) -> None:
    """Time every command ``rounds`` times per tree, alternating trees run by run."""
    for label, argv in COMMANDS.items():
        for tree in trees:
            run(tree, argv)  # warm-up: byte code, page cache
        samples: dict[str, list[float]] = {tree.name: [] for tree in trees}
        for _ in range(rounds):
            for tree in trees:
                samples[tree.name].append(run(tree, argv))
        print(label)
        for tree in trees:
            print(f"  {tree.name:<24} {summary(samples[tree.name])}   (n={rounds})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="runs per command and tree")
    parser.add_argument("--quick", action="store_true", help="2 rounds (smoke test)")
    parser.add_argument("--baseline", type=Path, action="append", default=[],
                        help="a checkout of earlier code timed alongside (repeatable)")
    opts = parser.parse_args()
    worker = ["-c", "1", "--without-mingle", "--without-gossip", "-l", "info"]
    with tempfile.TemporaryDirectory(prefix="sandrun-bench-cli-") as tmp_name, \
            bench_broker(Path(tmp_name)) as (_, env):
        tmp = Path(tmp_name)
        env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # would leave the prefix empty
        trees = [Tree("this tree", ROOT, env)]
        for base in opts.baseline:
            root = base.resolve()
            trees.append(Tree(f"baseline {root}", root, env))
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for i, tree in enumerate(trees):
                state = tmp / f"state{i}"
                state.mkdir()
                tree.env = {**env, "PYTHONPATH": str(tree.root), "SANDRUN_STATE_DIR": str(state),
                            "SANDRUN_DEFAULT_QUEUE": f"bench{i}"}
                check_source(tree)
                procs.append(start([sys.executable, "-m", "celery", "-A", "worker", "worker",
                                    "-Q", f"bench{i}", "-n", f"bench{i}@%h", *worker], tree.env,
                                   tmp / f"worker{i}.log", cwd=tree.root))
            measure(trees, 2 if opts.quick else opts.rounds)
        finally:
            for proc in procs:
                stop(proc)


if __name__ == "__main__":
    main()
