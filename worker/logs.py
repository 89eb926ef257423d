"""The one module that configures structlog (and stdlib logging) for a Sandrun process.

The CLI calls :func:`configure_logging` for people at a terminal; the logging
plugin calls it with its options in every process that hosts plugins. Celery's
own records go through the same processors (structlog's ``ProcessorFormatter``
on the root logger), so a worker's whole output is in one format. Events are
snake_case names with key/value fields; while a task runs, job_id, task_id,
attempt, queue and node are bound through contextvars by the task base class.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Literal, TextIO

import structlog
from structlog.typing import Processor

Format = Literal["json", "text", "structured", "console"]
HANDLER_NAME = "sandrun"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "warning": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL}


def _renderer(fmt: Format) -> Processor:
    if fmt == "json":
        return structlog.processors.JSONRenderer()
    if fmt == "text":
        return structlog.processors.LogfmtRenderer(key_order=["timestamp", "level", "event"])
    return structlog.dev.ConsoleRenderer(colors=fmt == "console" and sys.stderr.isatty())


def _stream(output: str) -> TextIO:
    if output == "stderr":  # the real stream: Celery may have replaced sys.stderr
        return sys.__stderr__ or sys.stderr
    if output == "stdout":
        return sys.__stdout__ or sys.stdout
    return open(output, "a", encoding="utf-8", buffering=1)


class _LineWriter:
    """structlog's final logger: writes each rendered event as one line to every output.

    Skipping stdlib's LogRecord machinery for our own events halves their cost;
    stdlib records (Celery's) still reach the same outputs through handlers."""

    def __init__(self, streams: Sequence[TextIO]) -> None:
        self.streams = streams

    def msg(self, message: str) -> None:
        for stream in self.streams:
            stream.write(message + "\n")
            stream.flush()

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


class _State:
    plugin_configured = False


#: The logger of Celery's per-task lines ("Task ... succeeded in 0.1s: <return value>").
TRACE_LOGGER = "celery.app.trace"
HIDDEN = "<not logged>"


class _NoReturnValues(logging.Filter):
    """Keeps the return value out of Celery's per-task lines: a job's is its whole result,
    the job's output included, and worker logs never carry a job's output."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, dict) and "return_value" in args:
            record.args = {**args, "return_value": HIDDEN}
            data = getattr(record, "data", None)
            if isinstance(data, dict) and "return_value" in data:
                record.data = {**data, "return_value": HIDDEN}
        return True


def keep_results_out_of_logs() -> None:
    """Install :class:`_NoReturnValues` on Celery's trace logger (once per process; a
    forked pool process inherits it). Called as a worker starts, whoever configures
    logging then."""
    logger = logging.getLogger(TRACE_LOGGER)
    if not any(isinstance(f, _NoReturnValues) for f in logger.filters):
        logger.addFilter(_NoReturnValues())


def plugin_configured() -> bool:
    """Whether a plugin (not the CLI default) configured logging in this process; the
    worker then keeps Celery from replacing that configuration with its own."""
    return _State.plugin_configured


def configure_logging(level: str = "warning", fmt: Format = "console",
                      outputs: Sequence[str] = ("stderr",), include_context: bool = True,
                      *, by_plugin: bool = False) -> None:
    """Send structlog events and stdlib records (Celery's too) to ``outputs`` in ``fmt``.

    Replaces the root logger's handlers, so calling it again (in a forked pool
    process, after Celery set up its own logging) leaves one configuration.
    """
    numeric = LEVELS[level.lower()]
    common: list[Processor] = [structlog.processors.TimeStamper(fmt="iso", utc=True),
                               structlog.processors.StackInfoRenderer(),
                               structlog.processors.format_exc_info]
    context: list[Processor] = [structlog.contextvars.merge_contextvars] if include_context \
        else []
    streams = [_stream(output) for output in outputs]
    writer = _LineWriter(streams)
    structlog.configure(
        processors=[*context, structlog.processors.add_log_level, *common, _renderer(fmt)],
        logger_factory=lambda *_: writer,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=False)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*context, structlog.stdlib.add_log_level,
                           structlog.stdlib.add_logger_name, *common],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    _renderer(fmt)])
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    for stream in streams:
        handler = logging.StreamHandler(stream)
        handler.set_name(HANDLER_NAME)
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(numeric)
    logging.captureWarnings(True)
    for name in ("celery", "celery.task", "celery.redirected", "kombu", "billiard"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    _State.plugin_configured = _State.plugin_configured or by_plugin
