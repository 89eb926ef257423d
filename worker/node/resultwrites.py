"""Plugin writes that land with a delivery's result, in the result's own script.

An ``on_result`` hook that records "this job has its result" (the ``auth`` plugin's
finished nonce) hands the write to
:meth:`~worker.plugin.context.ResultContext.store_with_result`. Where the result goes
to our result store (:class:`~worker.broker.resultstore.GuardedRedisBackend`) and the
plugin's storage lives in the same Redis, the write rides along in the script that
stores the result: one round trip fewer per job, and a crash can no longer leave the
record without the result (or the result without the record). Anything else is
written at once, as before; a write whose result Celery then did not store (the
message asked to ignore its result) is applied from Celery's ``on_success`` /
``on_failure`` handlers, so the record is never lost.

A short job's last live output and the end of its stream ride along the same way
(:func:`hand_over_stream`), so that a follower who sees the result has every line; a
delivery whose result is not stored (a retry, a deferral) appends them on its way out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
import structlog

from worker.broker.resultstore import STREAM_ATTRIBUTE, WRITES_ATTRIBUTE, GuardedRedisBackend
from worker.broker.streamwrites import StreamAppend
from worker.errors import StorageError
from worker.stores.ops import Set
from worker.stores.storage import PluginStorage, RedisStorage

log = structlog.get_logger("sandrun.task")


def wanted(task: Any, client: redis.Redis[bytes] | None) -> bool:
    """Whether ``task``'s result of this delivery is stored by our result store, which can
    take writes along (plugin storage is on Redis, ``client``, at all)."""
    backend = task.backend
    return (client is not None and isinstance(backend, GuardedRedisBackend)
            and getattr(backend, "serializer", None) == "json" and not task.ignore_result
            and not task.request.ignore_result)


def hand_over(task: Any, writes: tuple[tuple[PluginStorage, Set], ...]) -> None:
    """Give ``writes`` to the result store through the request
    (:data:`~worker.broker.resultstore.WRITES_ATTRIBUTE`); a write to another Redis, or
    another kind of storage, is applied now."""
    raw = []
    for storage, write in writes:
        if isinstance(storage, RedisStorage) and task.backend.shares_server(storage.client):
            raw.append(storage.raw_write(write))
            continue
        try:
            storage.set(write.key, write.value, write.ttl)
        except StorageError as exc:  # the job has ended; only what the write records is lost
            log.warning("result_write_failed", key=write.key, error=str(exc))
    if raw:
        task.request.update({WRITES_ATTRIBUTE: raw})


def hand_over_stream(task: Any, client: redis.Redis[bytes],
                     stream: Callable[[], StreamAppend]) -> bool:
    """Give the entries ``stream()`` makes (for a stream in ``client``'s Redis) to the
    result store through the request (:data:`~worker.broker.resultstore.STREAM_ATTRIBUTE`),
    when it stores this delivery's result in that Redis; False (nothing made) when the
    caller must append the entries itself."""
    if task is None or not wanted(task, client) or not task.backend.shares_server(client):
        return False
    task.request.update({STREAM_ATTRIBUTE: stream()})
    return True


def store_left(task: Any) -> None:
    """What was handed over with a result that Celery did not store (the message asked to
    ignore results, or the delivery ended in a retry or a deferral), applied after all
    (Celery's handlers run once the outcome is stored, or was not)."""
    left = task.request.get(WRITES_ATTRIBUTE)
    stream = task.request.get(STREAM_ATTRIBUTE)
    if stream is not None:
        task.request.update({STREAM_ATTRIBUTE: None})
        try:
            task.backend.store_stream(stream)
        except Exception as exc:  # a follower then waits for the result instead of the end
            log.warning("result_stream_write_failed", key=stream.key, error=str(exc))
    if not left:
        return
    task.request.update({WRITES_ATTRIBUTE: None})
    try:
        task.backend.store_writes(left)
    except Exception as exc:  # the outcome stands; only what the writes record is lost
        log.warning("result_write_failed", keys=[key for key, _, _ in left], error=str(exc))
