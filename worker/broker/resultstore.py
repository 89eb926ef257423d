"""The result backend of Sandrun's apps: Celery's Redis backend, its guard made atomic.

Celery keeps a stored SUCCESS from being overwritten (by a duplicate delivery's
STARTED, or a lost worker's late FAILURE) by reading the stored state before each
write: a GET, then SETEX and PUBLISH, two round trips with a window between them
in which another write can land. :class:`GuardedRedisBackend` does the same check
and write in one Lua script: one round trip per stored state, and no window.

Everything else (the stored meta, expiry, the PUBLISH that wakes ``result.get()``,
connection retries) is Celery's own. Only the JSON serializer is read by the script
(the only one ``celeryconfig`` accepts); with another it falls back to Celery's code.
:func:`~worker.broker.factory.make_app` installs it for ``redis://``, ``rediss://``
and ``redis+socket://`` result backends.

A final result can take writes along (:data:`WRITES_ATTRIBUTE` on the task's request:
records that mean "this job has its result", such as the ``auth`` plugin's finished
nonce) into the same script: one round trip, and never one without the other. It can
also take entries to append to a stream (:data:`STREAM_ATTRIBUTE`: a short job's last
live output and its end marker), so that a follower who sees the result has seen them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
import structlog
from celery import states
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str
from kombu.utils.objects import cached_property

from worker.broker.streamwrites import StreamAppend

#: KEYS[1]: the result key, KEYS[2..n+1]: keys SET with it, KEYS[n+2] (optional): a stream
#: appended to with it. ARGV: the encoded meta, seconds to keep it (0: forever), n, then per
#: SET key its value and TTL in ms ("": none); for the stream its MAXLEN (approximate), TTL
#: in seconds and entry count, then per entry its field count and field/value pairs.
#: The writes land whatever is stored (a finished job's records hold either way).
#: Returns 0 when a SUCCESS is already stored (no meta written), else 1.
_STORE_UNLESS_SUCCEEDED = """
local n = tonumber(ARGV[3])
for i = 1, n do
  local value, px = ARGV[2 + 2 * i], ARGV[3 + 2 * i]
  if px == '' then
    redis.call('SET', KEYS[i + 1], value)
  else
    redis.call('SET', KEYS[i + 1], value, 'PX', px)
  end
end
if #KEYS > n + 1 then
  local stream, at = KEYS[n + 2], 4 + 2 * n
  local maxlen, ttl, count = ARGV[at], ARGV[at + 1], tonumber(ARGV[at + 2])
  at = at + 3
  for _ = 1, count do
    local fields = tonumber(ARGV[at])
    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(ARGV, at + 1, at + 2 * fields))
    at = at + 1 + 2 * fields
  end
  redis.call('EXPIRE', stream, ttl)
end
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then return 0 end
end
local expires = tonumber(ARGV[2])
if expires > 0 then
  redis.call('SETEX', KEYS[1], expires, ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""
#: The request attribute a task sets to have writes land with its final result: a list
#: of (key, value, TTL in ms or "") that the store takes (and empties) as it writes.
WRITES_ATTRIBUTE = "sandrun_writes"
#: The request attribute a task sets to have entries appended to a stream with its final
#: result (a job's last live output and its end): a :class:`StreamAppend`, taken (and
#: emptied) as the store writes.
STREAM_ATTRIBUTE = "sandrun_stream"
log = structlog.get_logger("sandrun.results")



#: The aliases :func:`~worker.broker.factory.make_app` points at this backend.
BACKENDS = {scheme: f"{__name__}:GuardedRedisBackend" for scheme in ("redis", "rediss")}


class GuardedRedisBackend(RedisBackend):
    """Celery's Redis result backend; a stored SUCCESS is kept in the same script that
    writes, instead of by a read before the write (see the module docstring)."""

    #: Whether this process has seen Redis run the script (send_state relies on it).
    _script_loaded = False

    @cached_property
    def _store_unless_succeeded(self) -> Any:
        return self.client.register_script(_STORE_UNLESS_SUCCEEDED)

    def _store_result(self, task_id: Any, result: Any, state: str, traceback: Any = None,
                      request: Any = None, **kwargs: Any) -> Any:
        celery: Any = self  # Celery's own attributes, which its type stubs leave out
        if celery.serializer != "json":
            inherited: Any = super()
            return inherited._store_result(task_id, result, state, traceback, request,
                                           **kwargs)
        value, expires = self._encoded(task_id, result, state, traceback, request)
        final = state in states.READY_STATES
        writes = getattr(request, WRITES_ATTRIBUTE, None) if final else None
        stream = getattr(request, STREAM_ATTRIBUTE, None) if final else None
        self.ensure(self._store, (self.get_key_for_task(task_id), value, expires,
                                  tuple(writes or ()), stream))
        # stored: the request's no more, so what is left was not (store_writes, store_stream)
        if writes:
            setattr(request, WRITES_ATTRIBUTE, None)
        if stream is not None:
            setattr(request, STREAM_ATTRIBUTE, None)
        return result

    def _encoded(self, task_id: Any, result: Any, state: str, traceback: Any,
                 request: Any) -> tuple[Any, Any]:
        """The stored meta of ``state``, encoded as Celery's own backend does, and its
        expiry."""
        celery: Any = self
        meta = celery._get_result_meta(result=result, state=state, traceback=traceback,
                                       request=request)
        meta["task_id"] = bytes_to_str(task_id)
        value = self.encode(meta)
        limit = getattr(self, "_MAX_STR_VALUE_SIZE", None)  # as Celery's own set()
        if limit is not None and isinstance(value, str) and len(value) > limit:
            raise BackendStoreError("value too large for Redis backend", state=state,
                                    task_id=task_id)
        expires = getattr(self, "failure_expires", None) if state == states.FAILURE else None
        return value, celery.expires if expires is None else expires

    def send_state(self, task_id: str, result: Any, state: str, request: Any = None
                   ) -> Callable[[], None]:
        """Store ``state``, a state that is not final (STARTED), without waiting for Redis:
        the script is sent now and its reply read by the function returned, which the
        caller calls before it stores anything else for the task (its final result).

        A job's STARTED costs its round trip while the sandbox starts instead of before
        it. A send that fails is retried as Celery's own store would be, at once; a reply
        that is an error (a Redis that restarted and forgot the script, a dropped
        connection) is logged when read: STARTED is what ``status()`` shows while the
        job runs, and the job's result is stored after it all the same."""
        celery: Any = self
        if celery.serializer != "json" or not self._script_loaded:
            self.store_result(task_id, result, state, request=request)  # loads the script
            return _nothing
        value, expires = self._encoded(task_id, result, state, None, request)
        pool = self.client.connection_pool
        try:
            connection = pool.get_connection()
        except redis.RedisError:
            self.store_result(task_id, result, state, request=request)  # with retries
            return _nothing
        try:
            connection.send_command("EVALSHA", self._store_unless_succeeded.sha, 1,
                                    self.get_key_for_task(task_id), value, int(expires or 0),
                                    0)
        except redis.RedisError:
            pool.release(connection)
            self.store_result(task_id, result, state, request=request)
            return _nothing

        def reply() -> None:
            try:
                connection.read_response()
            except redis.exceptions.NoScriptError:  # a Redis restarted since
                self._script_loaded = False  # the next store loads it again
                log.info("state_not_stored", task_id=task_id, state=state,
                         reason="the result store had forgotten its script")
            except redis.RedisError as exc:
                connection.disconnect()
                log.warning("state_not_stored", task_id=task_id, state=state,
                            error=repr(exc))
            finally:
                pool.release(connection)
        return reply

    def shares_server(self, client: Any) -> bool:
        """Whether redis-py ``client`` talks to the Redis (and database) results go to, so
        that its keys can be written in the result's script."""
        def where(c: Any) -> tuple[Any, ...]:
            kwargs = c.connection_pool.connection_kwargs
            return (kwargs.get("host"), kwargs.get("port"), kwargs.get("path"),
                    int(kwargs.get("db") or 0))  # redis-py leaves db None for a socket URL
        return where(client) == where(self.client)

    def store_writes(self, writes: list[tuple[str, str, str]]) -> None:
        """Writes meant to land with a result that was not stored (the message asked to
        ignore results, say), in one atomic round trip of their own."""
        self.ensure(self._set_all, (writes,))

    def _set_all(self, writes: list[tuple[str, str, str]]) -> None:
        pipe = self.client.pipeline(transaction=True)  # built anew for each try
        for key, value, px in writes:
            pipe.set(key, value, px=int(px) if px else None)
        pipe.execute()

    def store_stream(self, stream: StreamAppend) -> None:
        """Entries meant to land with a result that was not stored (a retried or deferred
        delivery, a result not kept), in one round trip of their own."""
        self.ensure(self._append_all, (stream,))

    def _append_all(self, stream: StreamAppend) -> None:
        pipe = self.client.pipeline(transaction=True)  # built anew for each try
        stream.queue_on(pipe)
        pipe.execute()

    def _store(self, key: bytes, value: Any, expires: Any,
               writes: tuple[tuple[str, str, str], ...] = (),
               stream: StreamAppend | None = None) -> None:
        keys: list[Any] = [key, *(k for k, _, _ in writes)]
        args: list[Any] = [value, int(expires or 0), len(writes)]
        for _, stored, px in writes:
            args += [stored, px]
        if stream is not None:
            keys.append(stream.key)
            args += [stream.maxlen, stream.ttl, len(stream.entries)]
            for fields in stream.entries:
                args.append(len(fields))
                for name, data in fields:
                    args += [name, data]
        self._store_unless_succeeded(keys=keys, args=args)
        self._script_loaded = True  # redis-py loaded it if Redis did not know it


def _nothing() -> None:
    """What :meth:`GuardedRedisBackend.send_state` returns when it stored at once."""
