"""The one module that configures structlog (and stdlib logging) for a Sandrun process.

The CLI calls :func:`defer_logging` for people at a terminal; the logging
plugin calls :func:`configure_logging` with its options in every process that
hosts plugins. Celery's own records go through the same processors (structlog's
``ProcessorFormatter`` on the root logger), so a worker's whole output is in one
format. Events are snake_case names with key/value fields; while a task runs,
job_id, task_id, attempt, queue and node are bound through contextvars by the
task base class.

structlog is imported only when logging is configured: it imports rich (and
rich imports pygments) when they are installed, a tenth of a second that a CLI
command which logs nothing should not pay. Host code on the CLI's paths takes
its loggers from :func:`get_logger`, whose first event applies a configuration
:func:`defer_logging` left pending.

In a worker whose logging Celery set up (no logging plugin), :func:`route_to_stdlib`
hands structlog events to that setup, so they obey ``-l`` and come out in Celery's
format. :func:`quiet_celery_task_lines` drops Celery's end-of-task records, which
carry a task's whole return value, for the tasks that log their own end.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TextIO

if TYPE_CHECKING:
    from structlog.typing import EventDict, Processor

Format = Literal["json", "text", "structured", "console"]
HANDLER_NAME = "sandrun"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "warning": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL}


def _renderer(fmt: Format) -> Processor:
    import structlog

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
    #: The level :func:`defer_logging` was given, until logging is configured.
    pending: str | None = None
    #: The root logger's handlers and level before :func:`defer_logging`.
    before: tuple[list[logging.Handler], int] = ([], logging.WARNING)


def plugin_configured() -> bool:
    """Whether a plugin (not the CLI default) configured logging in this process; the
    worker then keeps Celery from replacing that configuration with its own."""
    return _State.plugin_configured


def configure_logging(level: str = "warning", fmt: Format = "console",
                      outputs: Sequence[str] = ("stderr",), include_context: bool = True,
                      *, by_plugin: bool = False) -> None:
    """Send structlog events and stdlib records (Celery's too) to ``outputs`` in ``fmt``.

    Replaces the root logger's handlers, so calling it again (in a forked pool
    process, after Celery set up its own logging) leaves one configuration; it
    also replaces a configuration :func:`defer_logging` left pending.
    """
    import structlog

    _State.pending = None
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
    handlers = []
    for stream in streams:
        handler = logging.StreamHandler(stream)
        handler.set_name(HANDLER_NAME)
        handler.setFormatter(formatter)
        handlers.append(handler)
    _take_root(handlers, numeric)
    _State.plugin_configured = _State.plugin_configured or by_plugin


def _take_root(handlers: Sequence[logging.Handler], level: int) -> None:
    """Make ``handlers`` the root logger's only ones, at ``level``, with warnings and
    Celery's own loggers sent there too."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    for name in ("celery", "celery.task", "celery.redirected", "kombu", "billiard"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


class _ConfigureOnFirstRecord(logging.Handler):
    """The root handler :func:`defer_logging` leaves: the first record that passes the
    level configures logging, then goes to the handlers that configuration made."""

    def emit(self, record: logging.LogRecord) -> None:
        apply_deferred_logging()
        for handler in logging.getLogger().handlers:
            if handler is not self and record.levelno >= handler.level:
                handler.handle(record)


def defer_logging(level: str = "warning") -> None:
    """Configure logging as ``configure_logging(level)`` does, but only once something
    logs: a stdlib record at ``level`` or above, a logger from :func:`get_logger`
    used, or :func:`apply_deferred_logging` (``resolve_ref`` calls it before it
    imports a plugin, which may use structlog directly). For the CLI, so that a
    command which logs nothing does not import structlog. :func:`cancel_deferred_logging`
    undoes it if nothing logged."""
    root = logging.getLogger()
    if _State.pending is None:
        _State.before = (list(root.handlers), root.level)
    _State.pending = level
    _take_root([_ConfigureOnFirstRecord()], LEVELS[level.lower()])


def apply_deferred_logging() -> None:
    """Configure now what :func:`defer_logging` deferred; nothing when nothing is pending."""
    if _State.pending is not None:
        configure_logging(_State.pending)


def cancel_deferred_logging() -> None:
    """Give the root logger back the handlers it had before :func:`defer_logging`, if
    nothing logged since: the CLI calls it when a command ends, so that a command run
    in-process (``CliRunner``) leaves no configuration pending for later code."""
    if _State.pending is None:
        return
    _State.pending = None
    handlers, level = _State.before
    _take_root(handlers, level)


class _FirstUseLogger:
    """A structlog logger made (and logging configured, if deferred) on first use."""

    def __init__(self, name: str, bound: dict[str, Any]) -> None:
        self._name, self._bound = name, bound
        self._logger: Any = None

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):  # copy and pickle probe for hooks before __init__ ran
            raise AttributeError(attr)
        apply_deferred_logging()  # on every use: a later command may defer again
        if self._logger is None:
            import structlog

            self._logger = structlog.get_logger(self._name, **self._bound)
        return getattr(self._logger, attr)


def get_logger(name: str, **bound: Any) -> Any:
    """``structlog.get_logger(name, **bound)``, imported and made when first used (structlog's
    own ``get_logger`` is typed ``Any`` too)."""
    return _FirstUseLogger(name, bound)


def _one_line(_: Any, __: str, event_dict: EventDict
              ) -> tuple[tuple[str], Mapping[str, Any]]:
    """The last processor of :func:`route_to_stdlib`: ``event key=value ...`` as the
    record's message (strings bare, other values as repr, like the console renderer);
    an exception goes to stdlib as ``exc_info``, so Celery's formatter prints a plain
    traceback."""
    passed = {key: event_dict.pop(key) for key in ("exc_info", "stack_info") if key in event_dict}
    event = event_dict.pop("event", "")
    fields = " ".join(f"{key}={value if isinstance(value, str) else repr(value)}"
                      for key, value in event_dict.items())
    return (f"{event} {fields}".rstrip(),), passed


def _context_first(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """The bound context (job_id, task_id, ...) before the event's own fields."""
    import structlog  # configured already when this processor runs

    return {**structlog.contextvars.get_contextvars(), **event_dict}


def route_to_stdlib() -> None:
    """Send structlog events through stdlib logging as one line each, for a worker whose
    logging Celery set up itself (no plugin configured it; the worker calls this once
    Celery's setup is done, and pool processes inherit it).

    Without it structlog's default prints every event to stdout whatever the worker's
    ``-l`` level (a pool process's stdout becomes WARNING records), and renders an
    exception with the local variables of every frame: a job's code, env and output."""
    if _State.plugin_configured:
        return
    import structlog  # here: importing worker.logs does not import structlog

    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, _context_first, _one_line],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger, cache_logger_on_first_use=False)


class _TaskEndFilter(logging.Filter):
    """Drops Celery's success, failure and retry records of the tasks ``owned`` names."""

    def __init__(self, owned: Callable[[str], bool]) -> None:
        super().__init__()
        from celery.app import trace  # here, so that importing worker never imports celery

        self.owned = owned
        # _log_error logs a failure with its policy's format stripped
        self.formats = frozenset({trace.LOG_SUCCESS, trace.LOG_FAILURE.strip(), trace.LOG_RETRY})

    def filter(self, record: logging.LogRecord) -> bool:
        data = getattr(record, "data", None)  # Celery's context, passed for custom handlers
        task_end = isinstance(record.msg, str) and record.msg in self.formats
        if not task_end or not isinstance(data, dict):
            return True
        return not self.owned(str(data.get("name")))


def quiet_celery_task_lines(owned: Callable[[str], bool]) -> None:
    """Drop Celery's own end-of-task records (logger ``celery.app.trace``: "succeeded in
    ...: <the whole return value>", "raised ...: <the exception>", "retry: ...") for the
    tasks ``owned`` says log their own end, whatever handlers and format are in use.
    Calling it again replaces the earlier filter."""
    logger = logging.getLogger("celery.app.trace")
    for old in [f for f in logger.filters if isinstance(f, _TaskEndFilter)]:
        logger.removeFilter(old)
    logger.addFilter(_TaskEndFilter(owned))
