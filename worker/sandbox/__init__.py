"""Running one job: the executor and every layer that confines it.

Lives here: ``executor`` (``run_in_sandbox``, the list of named steps), the
isolation probe that measures the host (``isolation``), the confinement layers
applied in the child (``confine``, ``landlock``), the launcher process that owns
the job's process tree (``launcher``), output collection (``collect``), GPU
devices (``gpu``), and memory cgroups: a slot per pool process, armed per job
(``cgroups``, with ``cgroupfs`` finding them and ``oomscore`` choosing the OOM
victim; not yet used by the executor).

May import: ``worker.stores`` (what collected outputs become) and the shared
modules. Never the plugin host, the node or the client: the sandbox knows
nothing of hooks or Celery.
"""
