"""The one module that configures structlog for a Sandrun process.

Called by the CLI at start and, later, by the logging plugin with its options.
Events are snake_case names with key/value fields.
"""

from __future__ import annotations

import logging

import structlog


def configure_logging(level: str = "warning") -> None:
    """Render events for a terminal, dropping those below ``level``."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.dev.ConsoleRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
        cache_logger_on_first_use=False,
    )
