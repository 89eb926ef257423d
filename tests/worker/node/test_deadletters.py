"""What a message dead-lettered by RabbitMQ becomes in the dead-letter store."""

from __future__ import annotations

import json

from worker.node.deadletters import RAW_LIMIT, letter_from_message
from worker.protocol import RUN_JOB


def body(args: list[object], kwargs: dict[str, object] | None = None) -> bytes:
    return json.dumps([args, kwargs or {}, {"callbacks": None}]).encode()


def test_a_job_stopped_by_the_delivery_limit_keeps_its_job_and_the_reason() -> None:
    headers = {"task": RUN_JOB, "id": "job-1", "x-first-death-reason": "delivery_limit",
               "x-first-death-queue": "sandrun"}
    letter = letter_from_message(body([{"id": "job-1", "code": "print(1)"}]), headers,
                                 "application/json")
    assert (letter.id, letter.task, letter.source) == ("job-1", RUN_JOB, "rabbitmq")
    assert letter.job == {"id": "job-1", "code": "print(1)"} and letter.raw is None
    assert "delivery limit of queue 'sandrun'" in letter.reason


def test_a_user_task_keeps_its_arguments_and_x_death_gives_the_reason() -> None:
    headers = {"task": "tests.add", "id": "t-1",
               "x-death": [{"reason": "rejected", "queue": "mine", "count": 1}]}
    letter = letter_from_message(body([2, 3], {"k": 1}), headers, "application/json")
    assert (letter.task_args, letter.task_kwargs, letter.job) == ([2, 3], {"k": 1}, None)
    assert "from queue 'mine' (rejected)" in letter.reason


def test_hostile_messages_are_kept_as_capped_text_with_capped_headers() -> None:
    headers = {"task": "x" * 10_000, "id": "i" * 10_000, "x-first-death-reason": "r" * 10_000,
               "x-death": "not a list"}
    letter = letter_from_message(b"\xff" * (RAW_LIMIT * 2), headers, "application/x-python")
    assert len(letter.task) == 255 and len(letter.id) == 255
    assert letter.raw is not None and len(letter.raw) == RAW_LIMIT
    assert letter.job is None and len(letter.reason) < 400
    assert letter_from_message(b"[1, 2]", {}, None).raw == "[1, 2]"
    assert letter_from_message(b"", {}, None).id.startswith("message-")
