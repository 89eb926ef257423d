"""The Celery app. ``celery -A worker worker`` finds it from the repository root.

Settings live in ``celeryconfig.py`` (environment-driven, no project imports).
With no ``SANDRUN_BROKER_URL`` the embedded default broker is started first and
its URLs exported, so workers started from this process share it. Every task of
the app, users' own included, uses :class:`worker.task.SandrunTask`.
"""

from __future__ import annotations

from worker.appfactory import make_app

app = make_app()

import worker.signals  # noqa: E402  (connects the signal bridge)
import worker.tasks  # noqa: E402, F401  (registers sandrun.run_job)
