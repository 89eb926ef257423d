"""The plugin host: what a plugin is, how it is checked, loaded, ordered and called.

Lives here: the hook spec (``spec``), the contexts hooks receive (``context``), the
manager (``manager``), the one dispatch loop (``dispatch``), validation and
dependency resolution (``validation``, ``deps``), the loader of plugin
references (``loader``), the threads timed hooks run on (``hookthreads``) and
the ``BasePlugin`` helpers (``helpers``).

May import: ``worker.stores``, ``worker.broker`` and the shared modules
(``errors``, ``models``, ``settings``, ``collector``, ``protocol``). Never the
node, the client or the sandbox: a producer loads plugins without Celery's
worker side and without the sandbox.
"""
