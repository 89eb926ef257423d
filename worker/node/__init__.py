"""The Celery side of a worker: the app, the signal bridge, the task base class,
the ``sandrun.run_job`` task, the consumer, health files, the drain of RabbitMQ's dead
letters (``deadletters``) and the per-process runtime.

Only ``signals`` talks to ``celery.signals``. May import every wing below it
(plugin host, sandbox, stores, broker) and the shared modules; never the client
or the CLI.
"""
