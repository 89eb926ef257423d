from __future__ import annotations

from decimal import Decimal

import pytest

from worker.errors import PaymentRejected, SubmissionRejected
from worker.models import Job
from worker.models.pricing import Pricing

PRICING = Pricing(currency="USD", cpu_second=Decimal("0.001"),
                  gpu_hour={"a100": Decimal("3.6"), "default": Decimal("1.8")})


def test_cost_of_a_cpu_run() -> None:
    cost = PRICING.cost(Job(code="1"), cpu_seconds=2.5, wall_seconds=10)
    assert (cost.amount, cost.currency) == ("0.00250000", "USD")


def test_cost_of_a_gpu_run_by_type_and_count() -> None:
    job = Job(code="1", gpu={"type": "a100", "count": 2})
    assert PRICING.cost(job, 0, 3600).amount == "7.20000000"
    other = Job(code="1", gpu={"type": "t4"})
    assert PRICING.cost(other, 0, 1800).amount == "0.90000000"


def test_worst_case_is_the_whole_timeout() -> None:
    assert PRICING.worst_case(Job(code="1", timeout=100)) == Decimal("0.1")
    gpu = Job(code="1", timeout=3600, gpu={"type": "a100"})
    assert PRICING.worst_case(gpu) == Decimal("3.6") + Decimal("3.6")


def test_payment_must_cover_the_worst_case() -> None:
    PRICING.check_payment(Job(code="1", timeout=100, payment={"amount": "0.1",
                                                              "currency": "USD"}))
    with pytest.raises(PaymentRejected, match=r"costs 0\.1"):
        PRICING.check_payment(Job(code="1", timeout=100, payment={"amount": "0.09",
                                                                  "currency": "USD"}))
    with pytest.raises(SubmissionRejected, match="pays in ETH"):
        PRICING.check_payment(Job(code="1", payment={"amount": "5", "currency": "ETH"}))


def test_missing_payment_only_when_required() -> None:
    PRICING.check_payment(Job(code="1"))
    strict = PRICING.model_copy(update={"require_payment": True})
    with pytest.raises(PaymentRejected, match="requires one"):
        strict.check_payment(Job(code="1"))
