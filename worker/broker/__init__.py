"""Broker plumbing: the Celery app factory, the embedded default broker, the
publish and storage retry policies, the Redis result backend of Sandrun's apps
(``resultstore``), and the one module that reads and rewrites broker and
result-backend URLs (``urls``), and how job queues are declared on RabbitMQ
(``amqp``).

May import: the shared modules only (``errors``, ``settings``). Everything above
uses it; it uses nothing above.
"""
