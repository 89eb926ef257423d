"""Celery settings for Sandrun workers and producers, read from the environment.

Only Celery settings live here (lowercase names, no project imports), and two of
Sandrun's own (below). The reasons for the reliability settings:

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a job whose worker dies
  mid-run goes back to the queue instead of being lost.
* ``worker_prefetch_multiplier = 1``: a worker holds one job per free slot, so a
  long job never sits reserved behind another.
* the Redis visibility timeout (``SANDRUN_VISIBILITY_TIMEOUT``) is checked at
  worker start to exceed the longest job timeout by a margin: a job still
  running when it expires would be delivered a second time. It is also how long
  the jobs of a killed worker wait before another worker gets them; the sweep
  that hands them back runs often enough for that (see ``_restore``).
* JSON only in ``accept_content``: a pickled message is never deserialised.
* task events and sent events on: Flower can follow every job.

Sandrun's own two are ``sandrun_worker_gossip`` and ``sandrun_worker_mingle``, read by
the worker's consumer (``worker_consumer``) since Celery has only command-line flags
for them; their comments say why both are off.
"""

import os

broker_url = os.environ.get("SANDRUN_BROKER_URL", "")
result_backend = os.environ.get("SANDRUN_RESULT_BACKEND") or broker_url

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# How long results are kept: Sandrun's SANDRUN_RESULT_TTL (worker.settings reads the same
# variable, default a day), so that one setting governs results everywhere.
result_expires = int(os.environ.get("SANDRUN_RESULT_TTL", "86400"))

task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# STARTED is stored by the task base class once plugins let a delivery run (so a
# dropped replay never writes over a stored result); this switches it on.
task_track_started = True
task_default_queue = os.environ.get("SANDRUN_DEFAULT_QUEUE", "sandrun")

worker_send_task_events = True
task_send_sent_event = True
broker_connection_retry_on_startup = True
# Messages the worker cannot run (undecodable, pickle, unknown task) are dead-lettered.
worker_consumer = "worker.node.consumer:SandrunConsumer"

_ON = {"1", "true", "yes", "on"}
# Gossip is off (SANDRUN_WORKER_GOSSIP=1 turns it on): with it every worker consumes the
# heartbeats of every other worker (a queue per worker, N x N messages every 2 s) for
# leader elections and node join/leave callbacks, which nothing in Sandrun uses:
# `sandrun workers` pings through remote control and reads the registry, cancel is a
# revoke broadcast (remote control), Flower reads the event stream.
sandrun_worker_gossip = os.environ.get("SANDRUN_WORKER_GOSSIP", "").lower() in _ON
# Mingle is off too (SANDRUN_WORKER_MINGLE=1 turns it on): it costs a worker about 1 s at
# start and only syncs revoked task ids and the logical clock with the workers already
# running. Sandrun's cancel writes a record to Redis before it broadcasts
# (worker/stores/revoked.py) and every worker reads it before it runs a delivery, so a
# worker that joins later (a scale-up, a restart) skips a cancelled job without mingle
# (tests/integration/test_cancel.py runs both ways). Mingle would only carry revokes made
# with Celery's own tools (`celery control revoke`) to a joining worker. Every broker it
# can run on (Redis, RabbitMQ) comes with the Redis that remembers; Celery never mingles
# over the embedded filesystem:// transport.
sandrun_worker_mingle = os.environ.get("SANDRUN_WORKER_MINGLE", "").lower() in _ON

_visibility_timeout = int(os.environ.get("SANDRUN_VISIBILITY_TIMEOUT", "7200"))
_visibility = {"visibility_timeout": _visibility_timeout}
# kombu looks for the unacknowledged messages of dead consumers every
# unacked_restore_interval x unacked_restore_throttle seconds (10 x 10 by default), so
# a short visibility timeout alone would still leave a dead worker's jobs waiting up to
# 100 s: sweep every twentieth of the timeout, between 1 s and those 100 s. The sweep
# lock a worker killed mid-sweep leaves behind expires within the timeout (<= 300 s).
_sweep = min(100, max(1, _visibility_timeout // 20))
_restore = {"unacked_restore_interval": min(_sweep, 10),
            "unacked_restore_throttle": max(1, _sweep // 10),
            "unacked_mutex_expire": min(300, max(10, _visibility_timeout))}
# Priorities on Redis: kombu keeps one list per priority step and serves LOWER numbers
# first (0 before 9); the scheduling plugin publishes Job.priority 9 (most urgent) as 0.
# A message without a priority goes to step 0. ``sep`` is kombu's own default, stated
# because the scheduling plugin reads these list names to measure a queue's depth.
# queue_order_strategy stays round_robin: kombu's BRPOP already lists every queue's
# step 0 before any step 1, and "priority" would pin the queue order, so a GPU host's
# plain queue would always win over its GPU queues at the same priority.
broker_transport_options = {
    **_visibility,
    **_restore,
    "priority_steps": list(range(10)),
    "sep": "\x06\x16",
}
# Reconnecting to the result store is bounded (about 2 s) so a producer facing a dead
# broker fails within its own publish retry window instead of Celery's 20 s default.
result_backend_transport_options = {
    **_visibility,
    "retry_policy": {"max_retries": 4, "interval_start": 0, "interval_step": 0.25,
                     "interval_max": 0.5},
}

# RabbitMQ's settings (publisher confirms, topic exchanges, the queue layout) are applied by
# worker/broker/factory.py's make_app whenever the app's broker is amqp://, also when a
# producer passes its URL explicitly: see worker/broker/amqp.py (amqp_settings). Among
# them broker_heartbeat (30 s, not Celery's 120): a consumer on a partitioned host holds
# a half-open connection that only missed heartbeats reveal (HEARTBEAT_SECONDS says why).

# The filesystem fallback (worker/broker/embedded.py) keeps everything under the state
# directory: messages in SANDRUN_BROKER_FOLDER, kombu's exchange routing tables beside it
# in ``control`` (kombu's default is a relative ``control/`` in the current directory, so
# a worker started in a checkout would write into the work tree).
if broker_url.startswith("filesystem://"):
    _folder = os.environ.get("SANDRUN_BROKER_FOLDER", "")
    broker_transport_options = {
        "data_folder_in": _folder,
        "data_folder_out": _folder,
        "control_folder": os.path.join(os.path.dirname(os.path.abspath(_folder)), "control"),
        "store_processed": False,
    }
