"""Options of the ``scheduling`` plugin (:mod:`plugins.scheduling` says what each
feature does), where its ``on_publish`` runs, and how a job's priority becomes the
broker's."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: ``on_publish`` priority: below the ``auth`` plugin's signature (-2000), so a held or
#: fair job is stored signed. The Celery priority it sets is not signed (a delivery
#: property), so setting it after the signature is safe.
HOLD_PRIORITY = -3000


class SchedulingConfig(BaseModel):
    """Options of the scheduling plugin; every feature is off unless configured."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    strategy: Literal["priority-first", "fifo", "fair"] = "priority-first"
    max_concurrent: int | None = Field(default=None, ge=1, description="running jobs per scope")
    concurrency_label: str | None = Field(default=None, description="cap per value of this "
                                          "job label instead of per queue")
    lease_ttl: float = Field(default=30.0, gt=0, description="s a dead worker's lease lasts")
    defer_seconds: float = Field(default=1.0, gt=0, description="countdown over the cap")
    rate: str | None = Field(default=None, description=(
        "job starts per scope across the fleet, e.g. '100/m', '5/s', '10/5m' (rates)"))
    rate_label: str | None = Field(default=None, description="rate per value of this job "
                                   "label (a tenant) instead of per queue")
    rate_burst: int = Field(default=1, ge=1, description="starts allowed at once before "
                            "the rate spaces them (1: evenly spaced, as Celery's rate_limit)")
    queue_size: int | None = Field(default=None, ge=1, description="jobs a queue may hold")
    queue_full_policy: Literal["reject", "block"] = "reject"
    block_timeout: float = Field(default=30.0, ge=0)
    fair_label: str = Field(default="tenant", description="the label naming a job's tenant")
    fair_window: int = Field(default=4, ge=1, description="fair jobs waiting in the broker")
    eta_horizon: float | None = Field(default=None, gt=0, description=(
        "hold jobs due later (s); default: visibility timeout - job timeout - margin"))
    claim_timeout: float = Field(default=60.0, gt=0, description="s before a claimed job "
                                 "whose publisher died is published again")
    release_batch: int = Field(default=100, ge=1)
    broker_url: str | None = Field(default=None, description="Redis holding held and fair "
                                   "jobs; default SANDRUN_BROKER_URL")

    @field_validator("rate")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None:
            from plugins.scheduling.rates import parse_rate

            parse_rate(value)  # a bad rate fails at load, naming the option
        return value


def celery_priority(priority: int, broker_url: str) -> int:
    """The Celery priority of ``Job.priority``: RabbitMQ serves higher numbers first,
    kombu's Redis transport lower ones."""
    return priority if broker_url.startswith(("amqp", "pyamqp")) else 9 - priority
