"""The Celery app. ``celery -A worker worker`` finds it from the repository root.

Settings live in ``celeryconfig.py`` (environment-driven, no project imports).
With no ``SANDRUN_BROKER_URL`` the embedded default broker is started first and
its URLs exported, so workers started from this process share it. Every task of
the app, users' own included, uses :class:`worker.task.SandrunTask`.
"""

from __future__ import annotations

from worker.appfactory import make_app

app = make_app()
# A worker stores each result itself. A broker outage at that moment (a restart, a
# failover) must not lose a finished job's result and leave its message unacknowledged
# until the visibility timeout, so workers retry storing it: Celery's backoff, 100 ms
# doubling to 2 s, 40 times (about a minute). Producers build their own app and keep
# failing fast (celeryconfig's result_backend_transport_options).
app.conf.update(result_backend_always_retry=True, result_backend_max_retries=40,
                result_backend_base_sleep_between_retries_ms=100,
                result_backend_max_sleep_between_retries_ms=2000)

import worker.signals  # noqa: E402  (connects the signal bridge)
import worker.tasks  # noqa: E402, F401  (registers sandrun.run_job)
