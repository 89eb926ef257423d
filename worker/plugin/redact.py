"""What a plugin without the ``secrets`` permission is handed: copies with secrets hidden.

Hidden: job env *values* (keys stay, so a plugin can still see that ``API_KEY`` is
set) in a Job, a JobBuilder, an Execution (its job and the job inside its task
arguments), a Publication (the job in its arguments) and the contexts that carry a
job (publish, result, error) or a message (execution: its arguments); and the values
of headers whose name says they are auth material (``auth``, ``token``, ``secret``,
``password``, ``signature``, ``credential``: the ``auth`` plugin's ``sandrun_auth``).
A context copy shares ``metadata`` and ``provenance`` with the original, so what a
plugin writes there is kept.

When such a plugin returns a changed object, every value it still shows as
:data:`REDACTED` is put back from the original before the change is used (a plugin
that adds a label must not wipe the env it never saw). Nothing is copied when there
is nothing to hide (a job without env, a message without auth headers).

What this cannot hide: the job's code and files (scripts that embed a key), and
values a plugin reaches outside what it is handed (the process environment).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from types import CoroutineType
from typing import Any

from worker.models import Execution, Job
from worker.models.builder import JobBuilder
from worker.plugin.context import ErrorContext, ExecutionContext, PublishContext, ResultContext
from worker.plugin.impl import Call
from worker.protocol import Publication

REDACTED = "<redacted>"
SECRET_HEADER_WORDS = ("auth", "token", "secret", "password", "signature", "credential")


@functools.lru_cache(maxsize=4096)  # a message carries ~20 names, nearly always the same
def secret_header(name: str) -> bool:
    """Whether a header named ``name`` carries auth material."""
    lowered = name.lower()
    return any(word in lowered for word in SECRET_HEADER_WORDS)


def _env(env: Mapping[str, Any]) -> dict[str, Any]:
    return dict.fromkeys(env, REDACTED)


def _payload(value: Any) -> Any:
    """A job's JSON form (in message arguments) with env values hidden."""
    if isinstance(value, dict) and isinstance(value.get("env"), dict) and value["env"]:
        return {**value, "env": _env(value["env"])}
    return value


def _args(args: list[Any]) -> list[Any]:
    hidden = [_payload(a) for a in args]
    return args if all(a is b for a, b in zip(hidden, args, strict=True)) else hidden


def _kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    hidden = {k: _payload(v) for k, v in kwargs.items()}
    return kwargs if all(hidden[k] is v for k, v in kwargs.items()) else hidden


def _headers(headers: dict[str, Any]) -> dict[str, Any]:
    secret = [k for k in headers if secret_header(k)]
    return {**headers, **dict.fromkeys(secret, REDACTED)} if secret else headers


def _job(job: Job | None) -> Job | None:
    return job.model_copy(update={"env": _env(job.env)}) if job is not None and job.env else job


def _redact_execution(data: Execution) -> Execution:
    job, args, kwargs = _job(data.job), _args(data.task_args), _kwargs(data.task_kwargs)
    if job is data.job and args is data.task_args and kwargs is data.task_kwargs:
        return data
    return data.model_copy(update={"job": job, "task_args": args, "task_kwargs": kwargs})


def _redact_publication(data: Publication) -> Publication:
    args, kwargs, headers = _args(data.args), _kwargs(data.kwargs), _headers(data.headers)
    if args is data.args and kwargs is data.kwargs and headers is data.headers:
        return data
    return dataclasses.replace(data, args=args, kwargs=kwargs, headers=headers)


def _redact_builder(data: JobBuilder[Any]) -> JobBuilder[Any]:
    env = data.fields.get("env")
    return data.with_fields({"env": _env(env)}) if env else data


_REDACTORS: dict[type, Callable[[Any], Any]] = {
    Job: _job, Execution: _redact_execution, Publication: _redact_publication,
    JobBuilder: _redact_builder}


def redact(data: Any) -> Any:
    """``data`` with its secrets hidden; ``data`` itself when it has none."""
    kind = type(data)
    if kind is Job:  # the common case, inline: this runs on every call of such a plugin
        return data.model_copy(update={"env": _env(data.env)}) if data.env else data
    redactor = _REDACTORS.get(kind)
    return data if redactor is None else redactor(data)


#: The contexts that carry a job or a message (a SubmissionContext, BuildContext or
#: WorkerContext carries neither).
_CARRIERS = frozenset({ExecutionContext, PublishContext, ResultContext, ErrorContext})


def redact_context(context: Any) -> Any:
    """``context`` with the secrets of the job or message it carries hidden (a copy
    sharing its ``metadata`` and ``provenance``); ``context`` itself when it has none."""
    kind = type(context)
    if kind not in _CARRIERS:
        return context
    if kind is ExecutionContext:
        args, kwargs = _args(context.args), _kwargs(context.kwargs)
        headers = _headers(context.headers)
        if args is context.args and kwargs is context.kwargs and headers is context.headers:
            return context
        return dataclasses.replace(context, args=args, kwargs=kwargs, headers=headers)
    if kind is PublishContext or kind is ResultContext or kind is ErrorContext:
        job = _job(context.job)
        execution = getattr(context, "execution", None)
        hidden = redact(execution) if execution is not None else None
        if job is context.job and hidden is execution:
            return context
        changes: dict[str, Any] = {"job": job}
        if kind is ErrorContext:
            changes["execution"] = hidden
        return dataclasses.replace(context, **changes)
    return context


def _restore_env(original: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    return {k: original[k] if v == REDACTED and k in original else v for k, v in new.items()}


def _restore_payloads(original: list[Any], new: list[Any]) -> list[Any]:
    out = []
    for index, value in enumerate(new):
        before = original[index] if index < len(original) else None
        if isinstance(value, dict) and isinstance(before, dict) and \
                isinstance(value.get("env"), dict) and isinstance(before.get("env"), dict):
            out.append({**value, "env": _restore_env(before["env"], value["env"])})
        else:
            out.append(value)
    return out


def _restore_kwargs(original: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    keys = list(new)
    return dict(zip(keys, _restore_payloads([original.get(k) for k in keys],
                                            [new[k] for k in keys]), strict=True))


def _restore_job(original: Job | None, new: Job | None) -> Job | None:
    if original is None or new is None or not new.env:
        return new
    return new.model_copy(update={"env": _restore_env(original.env, new.env)})


def _restore_execution(original: Execution, new: Execution) -> Execution:
    return new.model_copy(update={
        "job": _restore_job(original.job, new.job),
        "task_args": _restore_payloads(original.task_args, new.task_args),
        "task_kwargs": _restore_kwargs(original.task_kwargs, new.task_kwargs)})


def _restore_publication(original: Publication, new: Publication) -> Publication:
    headers = {k: original.headers.get(k, v) if v == REDACTED else v
               for k, v in new.headers.items()}
    return dataclasses.replace(new, headers=headers,
                               args=_restore_payloads(original.args, new.args),
                               kwargs=_restore_kwargs(original.kwargs, new.kwargs))


def _restore_builder(original: JobBuilder[Any], new: JobBuilder[Any]) -> JobBuilder[Any]:
    if not new.fields.get("env"):
        return new
    return new.with_fields({"env": _restore_env(original.fields.get("env", {}),
                                                new.fields["env"])})


_RESTORERS: dict[type, Callable[[Any, Any], Any]] = {
    Job: _restore_job, Execution: _restore_execution, Publication: _restore_publication,
    JobBuilder: _restore_builder}


def restore(original: Any, view: Any, returned: Any) -> Any:
    """What a plugin handed ``view`` (the hidden copy of ``original``) returned, with
    the values it could not see put back."""
    if returned is view:
        return original
    if view is original or type(returned) is not type(original):
        return returned
    restorer = _RESTORERS.get(type(returned))
    return returned if restorer is None else restorer(original, returned)


def _views(data: Any, context: Any) -> tuple[Any, Any]:
    """What a plugin without ``secrets`` is handed; the common cases (a Job without env,
    a context that carries no job) are decided inline: this runs on every such call."""
    view = data if type(data) is Job and not data.env else redact(data)
    return view, context if type(context) not in _CARRIERS else redact_context(context)


def hiding(call: Call, finish: Callable[[Any], Any]) -> Call:
    """``call`` handed copies with secrets hidden; what it returns gets the hidden values
    back. ``finish`` runs a coroutine it returns to its end (sync dispatch). With
    nothing to hide, ``call`` gets the originals and its result goes back untouched."""

    def hidden(data: Any, context: Any) -> Any:
        view, seen = _views(data, context)
        if view is data and seen is context:
            return call(data, context)
        result = call(view, seen)
        if type(result) is CoroutineType:
            result = finish(result)
        return None if result is None else restore(data, view, result)

    return hidden


def ahiding(call: Call) -> Call:
    """:func:`hiding` for the event loop: an awaitable result is awaited (with nothing to
    hide, the call's own result, awaitable or not, is handed back as it is)."""

    async def restoring(data: Any, view: Any, seen: Any) -> Any:
        result = call(view, seen)
        if inspect.isawaitable(result):
            result = await result
        return None if result is None else restore(data, view, result)

    def hidden(data: Any, context: Any) -> Any:
        view, seen = _views(data, context)
        if view is data and seen is context:
            return call(data, context)
        return restoring(data, view, seen)

    return hidden
