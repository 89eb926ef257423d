"""The Celery app. ``celery -A worker worker`` finds it from the repository root.

Settings live in ``celeryconfig.py`` (environment-driven, no project imports).
"""

from __future__ import annotations

from celery import Celery

app = Celery("sandrun")
app.config_from_object("celeryconfig")
