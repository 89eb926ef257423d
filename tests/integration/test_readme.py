"""README.md is executed: every fenced ``python`` and ``sh`` block runs against a real
``sandrun worker`` on a private redis-server, so a README that drifts from the code fails.

A block runs as it is written unless an HTML comment on the line right before it says
otherwise (the markers are visible in the README's source):

* ``<!-- readme-test: skip (why) -->``: not run, and reported as skipped with the reason;
  a skip without a reason fails.
* ``<!-- readme-test: setup CODE -->`` (python): CODE runs first in the same interpreter,
  for the names a fragment takes from the text around it.
* ``<!-- readme-test: publish (what) -->`` (sh): the README's ``sandrun.plugins`` entry
  points (its toml block) are installed first, as a distribution on ``PYTHONPATH``
  whose modules are the README python blocks that define the classes they name.

A marker of another kind, one before a block that is not run (toml) or one with no block
after it fails ``test_every_block_runs_or_says_why_not``. Python blocks run in a fresh
interpreter each (tracebacks name README.md and its line numbers), shell blocks under
``bash -e -u -o pipefail``; each in its own empty directory holding a link to
``examples/``, so nothing they write lands in the work tree.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import RedisServer
from tests.integration.conftest import ROOT, Worker, WorkerFactory, worker_env

pytestmark = pytest.mark.slow

README = ROOT / "README.md"
RUN = ("python", "sh")
KINDS = {"skip": RUN, "setup": ("python",), "publish": ("sh",)}
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w+-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*readme-test:\s*(?P<kind>\S+)\s*(?P<arg>.*?)\s*-->\s*$")
# Runs a block after its setup, both compiled with README.md as their file name.
RUNNER = ("import sys\n"
          "ns = {'__name__': '__main__'}\n"
          "exec(compile(sys.argv[1], 'README.md (readme-test setup)', 'exec'), ns)\n"
          "exec(compile(sys.argv[2], 'README.md', 'exec'), ns)\n")


class ReadmeError(Exception):
    """The README's markers or fences are malformed."""


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence
    lang: str
    code: str
    kind: str | None = None  # the marker right before it, if any
    arg: str = ""

    @property
    def name(self) -> str:
        return f"README.md:{self.line}"


def parse(text: str) -> list[Block]:
    """Every fenced block of ``text`` with the marker right before it."""
    lines, found = text.splitlines(), []
    marker: tuple[int, str, str] | None = None
    i = 0
    while i < len(lines):
        if (m := MARKER.match(lines[i])) is not None:
            if marker is not None:
                raise ReadmeError(f"README.md:{marker[0]}: marker with no block after it")
            marker = (i + 1, m["kind"], m["arg"])
        elif (fence := FENCE.match(lines[i])) is not None:
            start, indent, body = i + 1, len(fence["indent"]), []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
                i += 1
            if i == len(lines):
                raise ReadmeError(f"README.md:{start}: the block is never closed")
            kind, arg = (marker[1], marker[2]) if marker else (None, "")
            found.append(Block(start, fence["lang"], "\n".join(body) + "\n", kind, arg))
            marker = None
        elif marker is not None and lines[i].strip():
            raise ReadmeError(f"README.md:{marker[0]}: a marker goes on the line right "
                              "before its block")
        i += 1
    if marker is not None:
        raise ReadmeError(f"README.md:{marker[0]}: marker with no block after it")
    return found


def check(block: Block) -> None:
    """Raise ReadmeError if ``block``'s marker is unknown, misplaced or says too little."""
    if block.kind is None:
        return
    if block.kind not in KINDS:
        raise ReadmeError(f"{block.name}: unknown marker {block.kind!r}; use one of "
                          f"{', '.join(KINDS)}")
    if block.lang not in KINDS[block.kind]:
        raise ReadmeError(f"{block.name}: a {block.kind} marker before a {block.lang or 'plain'}"
                          f" block, which this test does not run that way")
    if not block.arg.strip("() "):
        raise ReadmeError(f"{block.name}: the {block.kind} marker needs "
                          f"{'code' if block.kind == 'setup' else 'a reason'}")


def runnable() -> list[Block]:
    """The python and sh blocks, for parametrizing; a broken README yields none here and
    fails ``test_every_block_runs_or_says_why_not`` instead of the whole collection."""
    try:
        return [b for b in parse(README.read_text()) if b.lang in RUN]
    except (OSError, ReadmeError):
        return []


def test_every_block_runs_or_says_why_not() -> None:
    blocks = parse(README.read_text())
    for block in blocks:
        check(block)
    run = [b for b in blocks if b.lang in RUN]
    assert len(run) >= 5, f"only {len(run)} python/sh blocks found: is the fence syntax changed?"
    producer = next(b for b in run if b.lang == "python")
    assert "from worker import Sandrun" in producer.code and producer.kind is None, (
        "the first producer example must run as written")


def test_the_parser_finds_markers_and_refuses_misplaced_ones() -> None:
    text = ("<!-- readme-test: skip (needs a GPU) -->\n```sh\nnvidia-smi\n```\n"
            "  <!-- readme-test: setup x = 1 -->\n  ```python\n  print(x)\n  ```\n")
    skipped, setup = parse(text)
    assert (skipped.kind, skipped.arg, skipped.code) == ("skip", "(needs a GPU)", "nvidia-smi\n")
    assert (setup.line, setup.kind, setup.arg, setup.code) == (6, "setup", "x = 1", "print(x)\n")
    with pytest.raises(ReadmeError, match=r"README\.md:1: a marker goes on the line right"):
        parse("<!-- readme-test: skip (x) -->\ntext\n```sh\nls\n```\n")
    with pytest.raises(ReadmeError, match="no block after it"):
        parse("```sh\nls\n```\n<!-- readme-test: skip (x) -->\n")
    for bad, message in [(Block(1, "sh", "", "skip", "()"), "needs a reason"),
                         (Block(1, "toml", "", "skip", "(x)"), "before a toml block"),
                         (Block(1, "sh", "", "setup", "x = 1"), "before a sh block"),
                         (Block(1, "sh", "", "skipp", "(x)"), "unknown marker 'skipp'")]:
        with pytest.raises(ReadmeError, match=message):
            check(bad)


@pytest.fixture(scope="module")
def worker(start_worker: WorkerFactory) -> Worker:
    """The reader's ``sandrun worker`` (the README's own is long-running, so skipped)."""
    return start_worker(name="readme", concurrency=2, cli=True)


def publish(site: Path, blocks: list[Block]) -> None:
    """Install the README's ``sandrun.plugins`` entry points under ``site``: one module per
    entry point, made of the README python block that defines its class."""
    points: dict[str, str] = {}
    for block in blocks:
        if block.lang == "toml":
            project = tomllib.loads(block.code).get("project", {})
            points.update(project.get("entry-points", {}).get("sandrun.plugins", {}))
    assert points, "publish: README.md has no [project.entry-points.\"sandrun.plugins\"] block"
    for target in points.values():
        module, _, attr = target.partition(":")
        source = next((b.code for b in blocks if b.lang == "python"
                       and re.search(rf"^class {re.escape(attr)}\b", b.code, re.M)), None)
        assert source is not None, f"publish: no README python block defines class {attr}"
        path = site.joinpath(*module.split(".")).with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
        for package in path.relative_to(site).parents[:-1]:
            (site / package / "__init__.py").touch()
    dist = site / "readme_plugins-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: readme-plugins\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(
        "[sandrun.plugins]\n" + "".join(f"{n} = {t}\n" for n, t in points.items()))


@pytest.mark.parametrize("block", runnable(), ids=lambda b: f"line{b.line}-{b.lang}")
def test_readme_block(block: Block, worker: Worker, broker: RedisServer, tmp_path: Path) -> None:
    check(block)
    if block.kind == "skip":
        pytest.skip(f"{block.name}: {block.arg.strip('() ')}")
    work = tmp_path / "cwd"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    env = worker_env(broker, tmp_path / "state")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if block.kind == "publish":
        publish(tmp_path / "site", parse(README.read_text()))
        env["PYTHONPATH"] = f"{tmp_path / 'site'}{os.pathsep}{env['PYTHONPATH']}"
    if block.lang == "python":
        setup = block.arg if block.kind == "setup" else ""
        argv = [sys.executable, "-c", RUNNER, setup, "\n" * block.line + block.code]
    else:
        argv = ["bash", "-e", "-u", "-o", "pipefail", "-c", block.code]
    proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True,
                          timeout=180, check=False)
    assert proc.returncode == 0, (f"{block.name} ({block.lang}) exited {proc.returncode}:\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
