"""The Celery app. ``celery -A worker worker`` finds it from the repository root.

Settings live in ``celeryconfig.py`` (environment-driven, no project imports).
With no ``SANDRUN_BROKER_URL`` the embedded default broker is started first and
its URLs exported, so workers started from this process share it. Every task of
the app, users' own included, uses :class:`worker.node.taskbase.SandrunTask`.
"""

from __future__ import annotations

from worker import logs
from worker.broker.factory import make_app
from worker.node.deadletters import BrokerDeadLetters
from worker.node.health import HealthFiles
from worker.node.leasekeeper import LeaseKeeping
from worker.node.run_job import register as register_run_job
from worker.node.signals import StartupChecks
from worker.node.taskbase import SandrunTask

app = make_app()
# A worker stores each result itself. A broker outage at that moment (a restart, a
# failover) must not lose a finished job's result and leave its message unacknowledged
# until the visibility timeout, so workers retry storing it: Celery's backoff, 100 ms
# doubling to 2 s, 40 times (about a minute). Producers build their own app and keep
# failing fast (celeryconfig's result_backend_transport_options).
app.conf.update(result_backend_always_retry=True, result_backend_max_retries=40,
                result_backend_base_sleep_between_retries_ms=100,
                result_backend_max_sleep_between_retries_ms=2000)



# Registration runs here, one way: the task and signal modules never import the app.
register_run_job(app)
app.steps["worker"].add(StartupChecks)
app.steps["consumer"].add(HealthFiles)
app.steps["consumer"].add(BrokerDeadLetters)
app.steps["consumer"].add(LeaseKeeping)
# Celery's end-of-task lines carry a job's whole result (its stdout) and a failure's
# exception; the app's tasks log job_finished, job_failed and job_retried instead.
logs.quiet_celery_task_lines(lambda name: isinstance(app.tasks.get(name), SandrunTask))
