"""The Celery app. ``celery -A worker worker`` finds it from the repository root.

Settings live in ``celeryconfig.py`` (environment-driven, no project imports).
With no ``SANDRUN_BROKER_URL`` the embedded default broker is started first and
its URLs exported, so workers started from this process share it. Every task of
the app, users' own included, uses :class:`worker.task.SandrunTask`.
"""

from __future__ import annotations

from celery import Celery

from worker.embedded import ensure_broker_configured


def make_app(broker_url: str | None = None, result_backend: str | None = None) -> Celery:
    """A Sandrun Celery app; explicit URLs override the environment's."""
    if not broker_url:
        ensure_broker_configured()
    celery_app = Celery("sandrun", task_cls="worker.task:SandrunTask")
    celery_app.config_from_object("celeryconfig")
    if broker_url:
        celery_app.conf.update(broker_url=broker_url,
                               result_backend=result_backend or broker_url)
    elif result_backend:
        celery_app.conf.update(result_backend=result_backend)
    return celery_app


app = make_app()

import worker.signals  # noqa: E402  (connects the signal bridge)
import worker.tasks  # noqa: E402, F401  (registers sandrun.run_job)
