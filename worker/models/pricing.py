"""Turning measured usage into a cost, and refusing jobs that cannot pay.

Configure with ``SANDRUN_PRICING``::

    {"currency": "USD", "cpu_second": "0.0001",
     "gpu_hour": {"a100": "2.50", "default": "1.20"}, "require_payment": false}

A job's cost is CPU-seconds x ``cpu_second`` plus, for GPU jobs, wall hours x
``gpu_hour`` of its type x GPU count. At submit, a job whose payment cannot
cover its worst case (the whole timeout at those rates, once per replica for a
consensus job: each of its ``n`` replicas is a run of its own) is rejected.
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from worker.errors import PaymentRejected
from worker.models.job import Job
from worker.models.result import Cost

QUANTUM = Decimal("0.00000001")


class Pricing(BaseModel):
    """Rates in one currency."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    currency: str
    cpu_second: Decimal = Field(default=Decimal(0), ge=0)
    gpu_hour: dict[str, Decimal] = Field(default_factory=dict)
    require_payment: bool = False

    def gpu_rate(self, gpu_type: str | None) -> Decimal:
        """Hourly rate of one GPU of ``gpu_type`` (the ``default`` entry when unlisted)."""
        rate = self.gpu_hour.get(gpu_type or "default", self.gpu_hour.get("default"))
        return Decimal(0) if rate is None else rate

    def _price(self, job: Job, cpu_seconds: Decimal, wall_seconds: Decimal) -> Decimal:
        total = cpu_seconds * self.cpu_second
        if job.gpu is not None and job.gpu.required:
            total += wall_seconds / 3600 * self.gpu_rate(job.gpu.type) * job.gpu.count
        return total.quantize(QUANTUM)

    def worst_case(self, job: Job) -> Decimal:
        """The most the job can cost: its whole timeout at these rates, times its
        replicas (``n`` of its consensus level)."""
        timeout = Decimal(str(job.timeout))
        return self._price(job, timeout, timeout) * job.quorum.n

    def cost(self, job: Job, cpu_seconds: float, wall_seconds: float) -> Cost:
        """What a finished run cost."""
        amount = self._price(job, Decimal(str(cpu_seconds)), Decimal(str(wall_seconds)))
        return Cost(amount=str(amount), currency=self.currency)

    def check_payment(self, job: Job) -> None:
        """Raise PaymentRejected unless the job's payment covers its worst case."""
        if job.payment is None:
            if self.require_payment:
                raise PaymentRejected(f"job {job.id} has no payment; this fleet requires one "
                                      f"(worst case {self.worst_case(job)} {self.currency})")
            return
        if job.payment.currency != self.currency:
            raise PaymentRejected(f"job {job.id} pays in {job.payment.currency}, but this fleet "
                                  f"prices in {self.currency}")
        worst = self.worst_case(job)
        if job.payment.decimal() < worst:
            raise PaymentRejected(
                f"job {job.id} offers {job.payment.amount} {self.currency}, but its worst case "
                f"(timeout {job.timeout:g}s at the configured rates{self._times(job)}) costs "
                f"{worst}; raise the payment or lower the timeout")

    @staticmethod
    def _times(job: Job) -> str:
        n = job.quorum.n
        return f", x{n} replicas for consensus {job.consensus}" if n > 1 else ""
