"""The producer API: the ``Sandrun`` client, ``JobExecution`` handles and the fluent
``JobBuilder`` (from ``worker.models``, which on_build hooks see too).

May import: the plugin host, the stores, the broker and the shared modules
(``protocol`` for the task and header names). Never the node or the sandbox: a
producer does not load the worker's task module or its sandbox to submit a job.
"""
