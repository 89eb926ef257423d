"""Red team: hostile jobs through a real client, a real password-protected broker and a
real ``celery worker`` with the sandbox's default settings.

One test per attempt; each fails when the attempt is not contained. Checks are on
behaviour only (what the job could read or do, what came back in the result, what
is left on the host), so they hold whatever the sandbox is built from. The table
(attempt | expected | result | contained) is printed at the end of the run, and
the module's teardown fails if anything of the suite is left on the host:
processes carrying its marker, job directories, or the disk space the jobs used.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tests.support import hostile
from tests.support.redteam import (
    Board,
    Lab,
    SecretBroker,
    Verdict,
    gone,
    host_addresses,
    mounts_with,
    outputs_of,
    owned_by_jobs,
    private_dir,
    processes_with,
)
from worker.client.client import Sandrun
from worker.models import Job, JobResult

pytestmark = pytest.mark.slow
GRACE_SECONDS = 5.0  # how long the sandbox may take past a job's timeout to end it
DISK_SLACK = 50 << 20
SHADOW = Path("/etc/shadow").read_bytes()
SHADOW_ROOT = next((line for line in SHADOW.splitlines() if line.startswith(b"root:")), SHADOW)


@dataclass(frozen=True)
class Attack:
    """One row of the table: what is tried, what containment means, and the attempt."""

    key: str
    attempt: str
    expected: str
    run: Callable[[Lab, Path], Verdict]

    @property
    def label(self) -> str:
        """The attempt as the table shows it: its row number first."""
        return f"{self.key.lstrip('0')} {self.attempt}"


ATTACKS: list[Attack] = []


def attack(key: str, attempt: str, expected: str
           ) -> Callable[[Callable[[Lab, Path], Verdict]], Callable[[Lab, Path], Verdict]]:
    """Register the decorated function as the attempt of row ``key``."""
    def register(run: Callable[[Lab, Path], Verdict]) -> Callable[[Lab, Path], Verdict]:
        ATTACKS.append(Attack(key, attempt, expected, run))
        return run
    return register


def last_json(result: JobResult) -> dict[str, Any]:
    """The JSON object a hostile program printed last ({} if it printed none)."""
    lines = result.stdout.strip().splitlines()
    try:
        found = json.loads(lines[-1]) if lines else {}
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def leaks(lab: Lab, *texts: str | bytes) -> list[str]:
    """Which of the worker's secrets appear in ``texts``."""
    joined = "".join(t.decode(errors="replace") if isinstance(t, bytes) else t for t in texts)
    return [s[:6] + "..." for s in lab.secrets if s in joined]


@attack("01", "symlink x->/etc, outputs x/shadow, x/*",
        "nothing read through x, no /etc/shadow")
def symlink_to_etc(lab: Lab, scratch: Path) -> Verdict:
    handle, result = lab.run("01", hostile.SYMLINK, "/etc", "x", outputs=["x/shadow", "x/*"])
    files = outputs_of(handle, result, scratch)
    shadowed = [p for p, data in files.items() if SHADOW in data or SHADOW_ROOT in data]
    through = [p for p in files if p.startswith("x/")]
    return Verdict(f"{result.outcome}; outputs: {sorted(files)[:4] or 'none'}"
                   f"{'; holds /etc/shadow' if shadowed else ''}", not shadowed and not through)


@attack("02", "symlink s->/proc/self, outputs s/environ",
        "the worker's environment stays out")
def symlink_to_proc_self(lab: Lab, scratch: Path) -> Verdict:
    handle, result = lab.run("02", hostile.SYMLINK, "/proc/self", "s", outputs=["s/environ"])
    files = outputs_of(handle, result, scratch)
    leaked = leaks(lab, result.model_dump_json(), *files.values())
    return Verdict(f"{result.outcome}; outputs: {sorted(files) or 'none'}; secrets: "
                   f"{leaked or 'none'}", not leaked and not files)


@attack("03", "read /etc/shadow", "cannot read it")
def read_shadow(lab: Lab, scratch: Path) -> Verdict:
    _, result = lab.run("03", hostile.READ_FILE, "/etc/shadow")
    got = SHADOW.decode(errors="replace") in result.stdout or \
        SHADOW_ROOT.decode(errors="replace") in result.stdout
    return Verdict(result.stdout.strip()[:60] if not got else "read the host's /etc/shadow",
                   not got)


@attack("04", "list /root, read /root/.bashrc", "cannot, or sees none of the host's")
def list_root(lab: Lab, scratch: Path) -> Verdict:
    _, result = lab.run("04", hostile.LIST_ROOT)
    seen = last_json(result)
    host = set(os.listdir("/root"))
    listing = seen.get("listing")
    shared = sorted(host & set(listing)) if isinstance(listing, list) else []
    bashrc = Path("/root/.bashrc")
    read = bashrc.is_file() and seen.get("bashrc") == bashrc.read_text(errors="replace")
    summary = (f"listed {len(shared)} host entries" if shared else
               f"listing: errno {seen.get('listing_error')}" if listing is None else
               f"listing: {listing[:3] if isinstance(listing, list) else listing}")
    return Verdict(f"{summary}; .bashrc {'read' if read else 'not read'}", not shared and not read)


@attack("05", "find a running job's secret file",
        "not found (path, neighbours, /tmp, /proc)")
def other_jobs_files(lab: Lab, scratch: Path) -> Verdict:
    """Job A keeps a secret in its directory while B runs; B is even told A's path (as the
    host sees it: job paths are guessable), and also searches its neighbours and /proc."""
    keeper = lab.submit("05a", hostile.KEEP_SECRET, 6)
    where = ""
    deadline = time.monotonic() + 30
    while not where and time.monotonic() < deadline:
        for pid in processes_with(f"{lab.marker}-05a"):
            if Path(f"/proc/{pid}/cwd/a-secret.txt").exists():  # written: B may look now
                where = os.readlink(f"/proc/{pid}/cwd")
        time.sleep(0.05)
    _, hunter = lab.run("05b", hostile.HUNT_SECRET, where or "/nonexistent")
    kept = keeper.wait(timeout=60)
    secret = next((line.split()[1] for line in kept.stdout.splitlines()
                   if line.startswith("secret ")), "")
    if not where or not secret:
        return Verdict(f"could not check: job A {kept.outcome}, path {where!r}", False)
    found = last_json(hunter).get("found")
    hits = [p for p, text in found.items() if secret in str(text)] if isinstance(found, dict) \
        else []
    return Verdict(f"secret read at {hits[:2]}" if hits or secret in hunter.stdout else
                   f"not found ({last_json(hunter).get('listed')} directories listed)",
                   secret not in hunter.stdout)


@attack("06", "read environ, mem of celery processes", "fails, or none visible")
def worker_proc_files(lab: Lab, scratch: Path) -> Verdict:
    """The worker's environment holds the broker password; its memory holds everything."""
    _, result = lab.run("06", hostile.PROC_OF_WORKER)
    seen = last_json(result)
    counts = {k: len(v) if isinstance(v, list) else -1 for k, v in seen.items()}
    leaked = leaks(lab, result.stdout)
    return Verdict(f"visible {counts.get('visible')}, environ read {counts.get('environ')}, "
                   f"mem read {counts.get('mem')}; secrets {leaked or 'none'}",
                   bool(seen) and not counts.get("environ") and not counts.get("mem")
                   and not leaked)


@attack("07", "SIGKILL worker, pool, a running job",
        "refused; job completes; worker serves")
def kill_everyone(lab: Lab, scratch: Path) -> Verdict:
    """SIGKILL goes only to the suite's own processes (this machine is shared); every other
    visible process gets signal 0, and one that accepts it counts as reachable."""
    sleeper = lab.submit("07a", hostile.SLEEP_THEN_SAY, 5)
    deadline = time.monotonic() + 30
    while not processes_with(f"{lab.marker}-07a") and time.monotonic() < deadline:
        time.sleep(0.05)
    _, killer = lab.run("07b", hostile.KILL_EVERYONE, *lab.suite_pids())
    slept = sleeper.wait(timeout=60)
    alive, serves = lab.worker.proc.poll() is None, lab.serves()
    seen = last_json(killer)
    killed, foreign = seen.get("killed") or [], seen.get("could_signal") or []
    survived = (slept.status, slept.stdout) == ("completed", "survived\n")
    return Verdict(f"killed {killed or 'none'}, could signal {len(foreign)} others; job A "
                   f"{'completed' if survived else slept.outcome}; worker "
                   f"{'serves' if alive and serves else 'broken'}",
                   bool(seen) and not killed and not foreign and survived and alive and serves)


@attack("08", "TCP to broker (127.0.0.1, host IPs, :6379)",
        "refused or unreachable, no reply")
def tcp_to_broker(lab: Lab, scratch: Path) -> Verdict:
    """The broker's port, the host's shared redis, and a listener of the test on each of
    the host's other addresses (the broker itself listens on loopback only)."""
    addresses = host_addresses()
    listeners = [socket.create_server((a, 0), family=socket.AF_INET6 if ":" in a else
                                      socket.AF_INET) for a in addresses]
    try:
        targets = [("127.0.0.1", lab.broker.port), ("127.0.0.1", 6379)]
        targets += [(a, lab.broker.port) for a in addresses]
        targets += [(a, s.getsockname()[1]) for a, s in zip(addresses, listeners, strict=True)]
        _, result = lab.run("08", hostile.CONNECT_TCP, json.dumps(targets))
        accepted = 0
        for server in listeners:
            server.setblocking(False)
            try:
                server.accept()[0].close()
                accepted += 1
            except BlockingIOError:
                pass
    finally:
        for server in listeners:
            server.close()
    seen = last_json(result)
    reached = sorted(t for t, v in seen.items() if str(v).startswith("connected"))
    return Verdict(f"reached {reached}" if reached else
                   f"{len(seen)} targets all refused or unreachable",
                   bool(seen) and not reached and not accepted)


@attack("09", "unix socket to broker (+ /run, /tmp paths)", "cannot connect")
def unix_to_broker(lab: Lab, scratch: Path) -> Verdict:
    """The broker's socket is mode 777 in a directory anyone may enter, so that only the
    sandbox, not file permissions, can keep a job from it."""
    paths = [str(lab.broker.socket), "/run/redis/redis-server.sock", "/run/redis/redis.sock",
             "/var/run/redis/redis-server.sock", "/var/run/redis/redis.sock", "/tmp/redis.sock"]
    _, result = lab.run("09", hostile.CONNECT_UNIX, *paths)
    seen = last_json(result)
    reached = {p: str(v)[11:30].strip() for p, v in seen.items()
               if str(v).startswith("connected")}
    return Verdict(f"connected: {reached}" if reached else f"{len(seen)} sockets, none reached",
                   bool(seen) and not reached)


def env_judged(lab: Lab, job: Job, result: JobResult) -> Verdict:
    """A job with a dangerous variable that was run: contained when it changed nothing
    outside itself (the worker serves) and its environment holds none of the worker's."""
    serves = lab.serves()
    leaked = leaks(lab, result.stdout)
    return Verdict(f"ran ({result.outcome}); worker {'serves' if serves else 'broken'}; "
                   f"secrets {leaked or 'none'}", serves and not leaked)


def refusal(error: str, name: str) -> Verdict:
    """A refusal counts when its message names the variable."""
    lines = [line.strip() for line in error.splitlines() if line.strip()] or ["(no message)"]
    return Verdict(f"refused: {next((x for x in lines if name in x), lines[0])}", name in error)


@attack("10a", "env LD_PRELOAD via the client",
        "refused clearly, or no effect outside")
def ld_preload_by_client(lab: Lab, scratch: Path) -> Verdict:
    try:
        job = lab.job("10a", hostile.SHOW_ENV, env={"LD_PRELOAD": "/tmp/x.so"})
    except ValidationError as exc:
        return refusal(str(exc), "LD_PRELOAD")
    assert lab.client is not None
    return env_judged(lab, job, lab.client.submit(job).wait(timeout=60))


@attack("10b", "env LD_PRELOAD, client check bypassed",
        "worker refuses, or no effect outside")
def ld_preload_past_client(lab: Lab, scratch: Path) -> Verdict:
    """A producer that skips the client's validation: the worker must refuse it itself."""
    job = Job.model_construct(code=hostile.SHOW_ENV, interpreter="python3",
                              args=[f"{lab.marker}-10b"], env={"LD_PRELOAD": "/tmp/x.so"})
    assert lab.client is not None
    result = lab.client.submit(job).wait(timeout=60)
    if result.status in ("rejected", "failed") and result.error is not None:
        return refusal(result.error.message, "LD_PRELOAD")
    return env_judged(lab, job, result)


@attack("10c", "env PYTHONPATH + sitecustomize.py",
        "refused, or affects only the job")
def pythonpath_injection(lab: Lab, scratch: Path) -> Verdict:
    """Any Python that starts with the job's PYTHONPATH leaves a mark in a world-writable
    directory outside the job, and says its uid; the job's own Python may be affected."""
    try:
        job = lab.job("10c", hostile.SHOW_ENV, files={"inject/sitecustomize.py":
                                                     hostile.SITECUSTOMIZE},
                      env={"PYTHONPATH": "inject", "REDTEAM_DROP": str(lab.drop)})
    except ValidationError as exc:
        return refusal(str(exc), "PYTHONPATH")
    assert lab.client is not None
    judged = env_judged(lab, job, lab.client.submit(job).wait(timeout=60))
    marks = sorted(os.listdir(lab.drop))
    return Verdict(f"{judged.result}; marks outside: {marks or 'none'}",
                   judged.contained and not marks)


@attack("11", "hardlinks h->/etc/shadow, p->/etc/passwd", "neither collected")
def hardlinks(lab: Lab, scratch: Path) -> Verdict:
    handle, result = lab.run("11", hostile.LINK_HARD, outputs=["h", "p", "*"])
    files = outputs_of(handle, result, scratch)
    host = (SHADOW, Path("/etc/passwd").read_bytes())
    taken = sorted(p for p, data in files.items() if p in ("h", "p") or data in host)
    return Verdict(f"{' '.join(result.stdout.split())[:40]}; collected: {taken or 'none'}",
                   not taken)


@attack("12", "1,100 nested dirs, output inside",
        "result stored, serves, nothing left")
def deep_nesting(lab: Lab, scratch: Path) -> Verdict:
    _, result = lab.run("12", hostile.NEST_DEEP, 1100, outputs=["**/deep.txt"], timeout=60)
    serves, left = lab.serves(), lab.left_behind(waiting_ok=True)
    return Verdict(f"{result.outcome}, {result.stdout.strip()}, {len(result.outputs)} outputs; "
                   f"worker {'serves' if serves else 'broken'}; left {len(left)}",
                   serves and not left)


@attack("13", "20,000 files, outputs **/*", "<= 1000 collected, truncation said")
def many_files(lab: Lab, scratch: Path) -> Verdict:
    _, result = lab.run("13", hostile.MANY_FILES, 20000, outputs=["**/*"], timeout=120)
    return Verdict(f"{result.outcome}; {len(result.outputs)} outputs, "
                   f"outputs_truncated={result.outputs_truncated}",
                   len(result.outputs) <= 1000 and result.outputs_truncated)


@attack("14", "write 2 GiB (32 MiB chunks, 64 files)",
        "cut by a cap; host disk unaffected")
def fill_disk(lab: Lab, scratch: Path) -> Verdict:
    """The disk of the job directories is measured before and after; a per-file cap alone
    does not cut the job, since it moves on to the next file."""
    target = 2 << 30
    before = shutil.disk_usage(lab.workdir).free
    _, result = lab.run("14", hostile.FILL_DISK, target, outputs=["none"], timeout=90)
    deadline = time.monotonic() + 10  # freed extents of deleted files may lag a little
    while (lost := before - shutil.disk_usage(lab.workdir).free) > DISK_SLACK and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    seen = last_json(result)
    written = seen.get("written")
    cut = written < target if isinstance(written, int) else result.outcome != "completed"
    # The free space is shared with tests running beside this one: it is reported, and
    # what counts is that nothing of the job's is left on the host's disk.
    owned = owned_by_jobs(str(lab.workdir), "/tmp", "/var/tmp")
    return Verdict(f"{result.outcome}; wrote {written} bytes, errnos {seen.get('errors')}; "
                   f"disk {lost >> 20} MiB lower after; job-owned files {owned or 'none'}",
                   cut and not owned)


def bomb(lab: Lab, key: str, code: str, **fields: float) -> Verdict:
    """A bomb is contained when a limit stops it, nothing of it is left, the worker serves."""
    _, result = lab.run(key, code, **fields)
    left, serves = gone(f"{lab.marker}-{key}"), lab.serves()
    said = f"{result.stdout.strip()[:30]}; " if result.stdout.strip() else ""
    return Verdict(f"{result.outcome} in {result.execution_time or 0:.1f}s; {said}"
                   f"left {len(left)}; worker "
                   f"{'serves' if serves else 'broken'}",
                   result.outcome in ("process_limit", "failed") and not left and serves)


@attack("15a", "thread bomb (5,000 threads)", "stopped (process_limit/failed)")
def thread_bomb(lab: Lab, scratch: Path) -> Verdict:
    return bomb(lab, "15a", hostile.THREAD_BOMB, timeout=20, cpu_seconds=10)


@attack("15b", "fork bomb", "stopped (process_limit/failed)")
def fork_bomb(lab: Lab, scratch: Path) -> Verdict:
    return bomb(lab, "15b", hostile.FORK_BOMB, timeout=3, cpu_seconds=3)


@attack("16", "memory_mb=128, map and touch 512 MiB", "memory_limit/failed/killed")
def memory_past_limit(lab: Lab, scratch: Path) -> Verdict:
    _, result = lab.run("16", hostile.TOUCH_MEMORY, 512, memory_mb=128, timeout=30)
    touched = [line for line in result.stdout.splitlines() if line.startswith("touched")]
    serves = lab.serves()
    return Verdict(f"{result.outcome}; {touched[-1] if touched else 'touched 0 MiB'}; worker "
                   f"{'serves' if serves else 'broken'}",
                   result.outcome in ("memory_limit", "failed", "signal")
                   and "touched 512 MiB" not in result.stdout and serves)


@attack("17", "ignore SIGTERM (+ detached child), 2 s",
        "timeout within 2 s + grace, none left")
def ignores_sigterm(lab: Lab, scratch: Path) -> Verdict:
    """End to end also counts queueing and storing the result: 5 s more are allowed."""
    started = time.monotonic()
    _, result = lab.run("17", hostile.IGNORE_SIGTERM, timeout=2)
    elapsed = time.monotonic() - started
    left = gone(f"{lab.marker}-17")
    ran = result.execution_time if result.execution_time is not None else elapsed
    return Verdict(f"{result.outcome} after {ran:.1f}s ({elapsed:.1f}s end to end); "
                   f"left {len(left)}",
                   result.outcome == "timeout" and ran <= 2 + GRACE_SECONDS
                   and elapsed <= 2 + GRACE_SECONDS + 5 and not left)


@attack("18", "look for secrets in os.environ",
        "no worker variable, URL or password")
def environment_secrets(lab: Lab, scratch: Path) -> Verdict:
    """``SANDRUN_JOB_ID`` holding the job's own id and ``SANDRUN_PROGRESS_FD`` naming its
    progress descriptor (a number) are allowed: the job is told them on purpose and they
    are no secrets; any other worker variable, the URL or a secret value is not."""
    handle, result = lab.run("18", hostile.SHOW_ENV)
    env = last_json(result)

    def told(key: str, value: object) -> bool:
        return (key, value) == ("SANDRUN_JOB_ID", handle.id) or (
            key == "SANDRUN_PROGRESS_FD" and str(value).isdigit())

    bad = sorted(k for k, v in env.items() if k.startswith(("SANDRUN_", "CELERY_", "REDIS", "AWS"))
                 and not told(k, v))
    bad += [f"value ~{k}" for k, v in env.items() if "redis://" in str(v)]
    leaked = leaks(lab, result.stdout)
    return Verdict(f"{len(env)} variables; worker's: {bad or 'none'}; secrets {leaked or 'none'}",
                   bool(env) and not bad and not leaked)


@pytest.fixture(scope="module")
def board(pytestconfig: pytest.Config) -> Board:
    made = Board()
    pytestconfig.pluginmanager.register(made, f"redteam-board-{uuid.uuid4().hex}")
    return made


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, board: Board) -> Iterator[Lab]:
    """The worker, broker and client; afterwards, the check that the host is left clean."""
    marker = f"redteam-{uuid.uuid4().hex[:12]}"
    dirs = [private_dir(f"{marker}-broker-", 0o755), private_dir(f"{marker}-jobs-", 0o1777),
            private_dir(f"{marker}-drop-", 0o777)]
    free = shutil.disk_usage("/tmp").free
    try:
        made = Lab(marker, SecretBroker(dirs[0]), tmp_path_factory.mktemp("redteam"), dirs[1],
                   dirs[2])
        try:
            made.start_worker()
            made.client = Sandrun.create(broker_url=made.broker.url, plugins=[])
            yield made
        finally:
            made.close()
        left, files, mounts = gone(marker), made.left_behind(), mounts_with(marker)
        lost = free - shutil.disk_usage("/tmp").free
        owned = owned_by_jobs("/tmp", "/var/tmp", "/dev/shm")
    finally:
        for made_dir in dirs:
            shutil.rmtree(made_dir, ignore_errors=True)
    # /tmp's free space is shared with tests running beside these: reported, not judged;
    # a job's leftovers on the host are found by their owner instead.
    verdict = Verdict(f"processes {left or 'none'}; job files/dirs {len(files)}; mounts "
                      f"{len(mounts)}; job-owned files {owned or 'none'}; /tmp "
                      f"{lost >> 20} MiB lower", not left and not files and not mounts
                      and not owned)
    board.record("end: host left clean", "no process, dir, mount or disk", verdict)
    assert verdict.contained, verdict.result


@pytest.mark.parametrize("attempt", ATTACKS, ids=[a.key for a in ATTACKS])
def test_hostile_job_is_contained(attempt: Attack, lab: Lab, board: Board,
                                  tmp_path: Path) -> None:
    revived = lab.revive()
    try:
        verdict = attempt.run(lab, tmp_path)
    except Exception as exc:
        board.record(attempt.label, attempt.expected,
                     Verdict(f"{revived}could not run: {type(exc).__name__}: {exc}", False))
        raise
    board.record(attempt.label, attempt.expected,
                 Verdict(revived + verdict.result, verdict.contained))
    assert verdict.contained, f"{attempt.label}: not contained: {verdict.result}"
