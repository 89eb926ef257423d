"""Running one job: the executor and every layer that confines it.

Lives here: ``executor`` (``run_in_sandbox``, the list of named steps) and what it
uses: the policy and plan of layers (``config``, ``plan``), the isolation probe that
measures the host (``isolation``), the job's root built by bubblewrap (``bwrap``),
the seccomp filter bubblewrap loads (``seccomp``), a uid and disk per pool slot
(``jobdirs``), memory cgroups, a slot per pool process armed per job (``cgroups``,
with ``cgroupfs`` finding them and ``oomscore`` choosing the OOM victim), the
layers applied in the child where no view is built (``confine``, ``landlock``), the
launcher process that owns the job's process tree (``launcher``, ``reaping``),
capturing its output (``capture``), naming its outcome (``outcome``), output
collection (``collect``) and GPU devices (``gpu``).

May import: ``worker.stores`` (what collected outputs become) and the shared
modules. Never the plugin host, the node or the client: the sandbox knows
nothing of hooks or Celery.
"""
