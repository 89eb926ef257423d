"""Periodic jobs: named cron schedules kept in Redis, fired by ``sandrun beat``.

The Redis is the broker's, or on a RabbitMQ fleet the result backend's.

``sandrun schedule add NAME --cron "*/5 * * * *" DIR`` stores a :class:`Schedule`
(the job as it will be submitted, its cron expression, an optional ``expires_in``
per run); ``list`` and ``remove`` read and delete them. Every beat calls
:meth:`ScheduleRunner.tick`: for each schedule, the due times since the last
``grace`` seconds (never before the schedule was added) are claimed one by one with
a Redis ``SET NX`` on ``sandrun:schedules:fired:<name>:<due>``, and only the beat
that wins a claim submits that run, through the client (``on_submit``, then the
``on_publish`` chain, so the ``auth`` plugin signs it and the ``scheduling``
plugin may hold it). So however many beats run, each due run is submitted once.

Cron expressions are croniter's: five fields (minute hour day month weekday),
optionally a sixth for seconds, or ``@hourly`` and the like, read in UTC. A run's
job id is ``<name>-<due Unix second>``, so a run is one job however it is looked at
(a worker keeps a finished id's result). At most once: if the winning beat cannot
publish (the broker is down), it gives the claim back and a later tick, by any
beat, tries again within ``grace``; if it dies between claim and publish, that run
is skipped. Runs more than ``grace`` late (every beat was down) are skipped, not
backfilled.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import redis
import structlog
from croniter import croniter
from pydantic import BaseModel, Field, ValidationError, field_validator

from worker.broker.urls import redis_client
from worker.errors import ConfigurationError, InvalidJob, SandrunError
from worker.models import Job
from worker.models.limits import FROZEN

if TYPE_CHECKING:
    from worker.client.client import Sandrun
    from worker.plugin.manager import PluginManager
    from worker.settings import Settings

KEY = "sandrun:schedules"
FIRED = "sandrun:schedules:fired:"
#: Runs one tick submits at most per schedule (the latest ones): a per-second schedule
#: whose beats were away a while does not flood the broker on their return.
MAX_RUNS_PER_TICK = 100
log = structlog.get_logger("sandrun.schedules")


class Schedule(BaseModel):
    """One periodic job: ``job`` (its fields, as JSON) is submitted at every ``cron`` time."""

    model_config = FROZEN
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$", description=(
        "letters, digits, '_', '.', '-'; at most 40, as run ids are <name>-<due second>"))
    cron: str
    job: dict[str, Any]
    expires_in: float | None = Field(default=None, gt=0, description=(
        "each run's deadline: this many seconds after its due time"))
    created_at: float = Field(default_factory=time.time)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        if not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a cron expression such as '*/5 * * * *' "
                             "(minute hour day month weekday, optionally seconds last)")
        return value

    @field_validator("job")
    @classmethod
    def _job(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in ("scheduled_time", "deadline", "expires_in"):
            if value.get(key) is not None:
                raise ValueError(f"a periodic job has no {key} of its own: its runs start at "
                                 "their cron times; give the schedule an expires_in instead")
        Job.model_validate(value)  # refused now rather than at every run
        return value

    def due_times(self, since: float, until: float) -> list[float]:
        """Cron times in ``(since, until]`` and after ``created_at``: the latest
        ``MAX_RUNS_PER_TICK`` of them, oldest first."""
        start = max(since, self.created_at)
        times: list[float] = []
        cron = croniter(self.cron, start)
        while (due := float(cron.get_next(float))) <= until:
            times.append(due)
            if len(times) > MAX_RUNS_PER_TICK:
                times.pop(0)
        return times

    def run(self, due: float) -> Job:
        """The job of the run due at ``due`` (Unix seconds)."""
        fields: dict[str, Any] = {**self.job, "id": f"{self.name}-{int(due)}"}
        if self.expires_in is not None:
            fields["deadline"] = due + self.expires_in
        return Job.model_validate(fields)


def schedule_from(name: str, cron: str, job: Job | Mapping[str, Any],
                  expires_in: float | None = None) -> Schedule:
    """A checked schedule; a bad name, cron or job is an InvalidJob naming the field."""
    fields = job.model_dump(mode="json", exclude_defaults=True, exclude={"id"}) \
        if isinstance(job, Job) else dict(job)
    try:
        return Schedule(name=name, cron=cron, job=fields, expires_in=expires_in)
    except ValidationError as exc:
        problems = [(".".join(map(str, e["loc"])) or "schedule",
                     e["msg"].removeprefix("Value error, ")) for e in exc.errors()]
        raise InvalidJob(problems, source=f"schedule {name!r}") from None


class ScheduleStore:
    """Schedules in one Redis hash (``sandrun:schedules``: name -> JSON) and the claims
    of their runs."""

    def __init__(self, client: redis.Redis[bytes]) -> None:
        self.client = client

    @classmethod
    def for_urls(cls, broker_url: str, result_backend: str | None = None) -> ScheduleStore:
        """The store on the broker's Redis, else the result backend's (a RabbitMQ fleet);
        a ConfigurationError when neither is Redis."""
        client = redis_client(broker_url) or redis_client(result_backend or "")
        if client is None:
            raise ConfigurationError(
                f"periodic schedules are kept in Redis, but the broker is {broker_url!r} "
                f"and the result backend {result_backend!r}; set SANDRUN_BROKER_URL or "
                "SANDRUN_RESULT_BACKEND to a redis:// URL")
        return cls(client)

    @classmethod
    def for_client(cls, client: Sandrun) -> ScheduleStore:
        """The store the client's broker and result backend point at."""
        conf = client.app.conf
        return cls.for_urls(str(conf.broker_url), str(conf.result_backend or ""))

    def add(self, schedule: Schedule, *, replace: bool = False) -> None:
        """Store ``schedule``; one of that name already stored is an error unless ``replace``."""
        data = schedule.model_dump_json()
        if replace:
            self.client.hset(KEY, schedule.name, data)
        elif not self.client.hsetnx(KEY, schedule.name, data):
            raise SandrunError(f"a schedule named {schedule.name!r} already exists; remove it "
                               "first or pass --replace")

    def remove(self, name: str) -> bool:
        """Delete the schedule ``name``; False if there was none."""
        return bool(self.client.hdel(KEY, name))

    def list(self) -> list[Schedule]:
        """Every stored schedule, by name (one that no longer parses is logged, skipped)."""
        out = []
        for name, raw in sorted(self.client.hgetall(KEY).items()):
            try:
                out.append(Schedule.model_validate_json(raw))
            except ValidationError as exc:
                log.error("schedule_unreadable", name=name.decode(errors="replace"),
                          error=str(exc))
        return out

    def claim(self, name: str, due: float, keep: float) -> bool:
        """Take the run of ``name`` due at ``due``: True for exactly one caller."""
        return bool(self.client.set(f"{FIRED}{name}:{int(due)}", "1", nx=True,
                                    ex=max(1, int(keep))))

    def unclaim(self, name: str, due: float) -> None:
        """Give a claim back (its run could not be submitted): a later tick may retry."""
        self.client.delete(f"{FIRED}{name}:{int(due)}")


class ScheduleRunner:
    """What ``sandrun beat`` calls every interval: submit the runs that are due."""

    def __init__(self, client: Sandrun, store: ScheduleStore, grace: float = 60.0) -> None:
        self.client, self.store, self.grace = client, store, grace

    @classmethod
    def for_beat(cls, manager: PluginManager, settings: Settings,
                 broker_url: str) -> ScheduleRunner:
        """A runner submitting through ``manager`` (the beat's plugins, so the runs are
        signed and scheduled like any job) to the broker at ``broker_url``."""
        from worker.broker.factory import make_app
        from worker.client.client import Sandrun

        app = make_app(broker_url, os.environ.get("SANDRUN_RESULT_BACKEND")
                       or settings.result_backend)
        client = Sandrun(app, manager, settings)
        try:
            store = ScheduleStore.for_client(client)
        except ConfigurationError:
            app.close()
            raise
        return cls(client, store, settings.schedule_grace)

    def close(self) -> None:
        """Release the broker connections (the plugins belong to the caller)."""
        self.client.app.close()

    def tick(self, now: float | None = None) -> int:
        """Claim and submit every run due in the last ``grace`` seconds that no beat has
        claimed yet; return how many this call submitted. A failure (Redis away) is
        logged, not raised: the next tick tries again, within the grace."""
        now = time.time() if now is None else now
        submitted = 0
        try:
            for schedule in self.store.list():
                for due in schedule.due_times(now - self.grace, now):
                    if self.store.claim(schedule.name, due, keep=max(3600.0, 2 * self.grace)):
                        submitted += self._submit(schedule, due, now)
        except redis.RedisError as exc:
            log.error("schedule_tick_failed", error=repr(exc), submitted=submitted)
        return submitted

    def _submit(self, schedule: Schedule, due: float, now: float) -> int:
        job = schedule.run(due)
        if job.expired(datetime.fromtimestamp(now, UTC)):
            log.warning("schedule_run_expired", schedule=schedule.name, due=due, job_id=job.id)
            return 0
        try:
            self.client.submit(job)
        except Exception as exc:  # this run only: give it back, a later tick retries it
            self.store.unclaim(schedule.name, due)
            log.error("schedule_submit_failed", schedule=schedule.name, due=due,
                      job_id=job.id, error=str(exc))
            return 0
        log.info("schedule_run_submitted", schedule=schedule.name, due=due, job_id=job.id,
                 late=round(now - due, 3))
        return 1
