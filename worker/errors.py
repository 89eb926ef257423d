"""The one error tree of Sandrun.

Every error the host raises on purpose derives from :class:`SandrunError`, so a
caller can catch the family with one ``except``. Messages say what is wrong and
how to fix it; they are meant to be shown to a person as they are.

::

    SandrunError
    ├── ConfigurationError        bad settings: environment, SANDRUN_PLUGINS, CLI input
    ├── InvalidJob (ValueError)   a job or manifest that breaks a rule (names field and rule)
    ├── StorageError              a plugin storage backend failed
    ├── BrokerUnavailable         the broker stayed unreachable while publishing
    ├── WaitTimeout               a job's result did not arrive in time
    ├── JobFailed                 handed to on_error when a job ends other than completed
    ├── PluginError               anything about a plugin, named in the message
    │   ├── PluginNotFound        a name or "module:attr" that resolves to no plugin
    │   ├── InvalidPlugin         name, version, hook signatures, unknown ``on_*`` methods
    │   ├── PluginConfigError     configuration rejected by the manifest's model
    │   ├── DependencyError       missing, conflicting or cyclic dependencies (all listed)
    │   ├── PluginLoadError       ``on_init`` failed, so the plugin was not loaded
    │   ├── PluginAlreadyLoaded   a second plugin with a loaded name
    │   ├── PluginNotLoaded       unload/lookup of a name that is not loaded
    │   ├── UnloadRefused         another loaded plugin still depends on it
    │   ├── HookCallError         a hook was called the wrong way (async from a loop)
    │   ├── HookTimeout           a hook ran past its timeout and was abandoned
    │   └── PermissionRefused     a plugin used a capability it was not granted
    └── HookControl               raised by hooks on purpose; never isolated, always propagates
        ├── SubmissionRejected    ``on_submit`` or ``on_publish`` vetoes a job: it is not published
        │   ├── PaymentRejected   the payment cannot cover the job's worst-case cost
        │   ├── ConsensusUnavailable  fewer live workers than a consensus job's replicas
        │   ├── GPUUnavailable    no registered worker has cards that meet a job's GPU needs
        │   └── QueueFull         the target queue is at its configured size (backpressure)
        ├── PublicationHeld       ``on_publish`` took the message over: stored, to be sent later
        ├── RetryRequested        ``on_error`` asks for the task to run again after a delay
        ├── StartupRefused        ``on_worker_start`` stops a worker from starting
        ├── JobDeferred           ``on_execute`` puts the job back for later (no attempt used)
        ├── DuplicateDelivery     ``on_execute`` drops a copy of a message already accepted
        └── JobRejected           ``on_execute`` vetoes a job before it runs

Hook isolation: a hook that raises anything other than :class:`HookControl` is
logged, counted and skipped; the chain goes on. So is one that times out
(:class:`HookTimeout`, counted with ``kind="timeout"``). Subclass ``HookControl`` for a
custom hook's own control flow.
"""

from __future__ import annotations


class SandrunError(Exception):
    """Base of every error Sandrun raises on purpose."""


class ConfigurationError(SandrunError):
    """A setting (environment variable, CLI option, plugin list) is invalid."""


class InvalidJob(SandrunError, ValueError):
    """A job or job manifest breaks a rule.

    ``problems`` holds one ``(field, rule)`` pair per broken rule, so tools can
    show them one per line; ``str(error)`` already does.
    """

    def __init__(self, problems: list[tuple[str, str]], *, source: str = "job") -> None:
        self.problems = problems
        lines = "\n".join(f"  {field}: {rule}" for field, rule in problems)
        super().__init__(f"invalid {source} ({len(problems)} problem(s)):\n{lines}")


class StorageError(SandrunError):
    """A plugin storage backend failed (for example Redis is unreachable)."""


class BrokerUnavailable(SandrunError):
    """Publishing failed because the broker stayed unreachable for the whole retry window.

    The message is not queued, except in one window: a request the broker received just
    as the connection failed, its reply lost. Retry by submitting the same job (same id):
    a delivery of a job whose result is stored returns it instead of running again."""


class WaitTimeout(SandrunError):
    """A job's result did not arrive within the time the caller was willing to wait."""


class JobFailed(SandrunError):
    """A job ended with a status other than completed; ``result`` holds its JobResult."""

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result


class PluginError(SandrunError):
    """Something is wrong with a plugin; the message names it."""


class PluginNotFound(PluginError):
    """A plugin reference resolves to nothing."""


class InvalidPlugin(PluginError):
    """A plugin breaks the spec: name, version, hook names or signatures."""


class PluginConfigError(PluginError):
    """A plugin's configuration does not validate against its manifest model."""


class DependencyError(PluginError):
    """Plugin dependencies cannot be satisfied; ``problems`` lists every one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"plugin dependencies cannot be satisfied:\n{lines}")


class PluginLoadError(PluginError):
    """A plugin's ``on_init`` raised, so it was not loaded."""


class PluginAlreadyLoaded(PluginError):
    """A plugin with the same name is already loaded."""


class PluginNotLoaded(PluginError):
    """The named plugin is not loaded."""


class UnloadRefused(PluginError):
    """Unloading would break a loaded plugin that depends on this one."""


class HookCallError(PluginError):
    """A hook was dispatched in a way that cannot work (e.g. async hook, sync call in a loop)."""


class HookTimeout(PluginError):
    """A hook call ran longer than its timeout: the chain went on without it.

    Handed to the manager's hook isolation (never raised to the host), which logs
    and counts it as a ``timeout`` fault of ``plugin`` and ``hook``. ``hung`` is
    set when the call was refused outright because earlier calls of the plugin
    are still running past their timeout."""

    def __init__(self, plugin: str, hook: str, timeout: float, hung: int = 0) -> None:
        self.plugin, self.hook, self.timeout, self.hung = plugin, hook, timeout, hung
        if hung:
            what = (f"was not called: {hung} earlier calls of plugin {plugin!r} are still "
                    f"running past their timeout ({timeout:g}s)")
        else:
            what = f"did not finish within {timeout:g}s and was abandoned"
        super().__init__(f"hook {hook} of plugin {plugin!r} {what}; the chain went on with "
                         "the data unchanged (a plugin that needs longer sets hook_timeout, "
                         "or @hook(timeout=...); the default is SANDRUN_HOOK_TIMEOUT)")


class PermissionRefused(PluginError):
    """A plugin used a capability (storage, network) it was not granted; raised at the
    call that tried, logged and counted with ``kind="permission"``."""

    def __init__(self, plugin: str, permission: str, tried: str) -> None:
        self.plugin, self.permission, self.tried = plugin, permission, tried
        super().__init__(f"plugin {plugin!r} tried to {tried}, which needs the {permission!r} "
                         "permission it was not granted; declare it in the plugin's "
                         "manifest (permissions=[...]) and, if the operator narrowed it, "
                         "grant it in SANDRUN_PLUGIN_PERMISSIONS")


class HookControl(SandrunError):
    """Base of control-flow exceptions: raised by hooks on purpose, never isolated."""


class SubmissionRejected(HookControl):
    """Raised by an ``on_submit`` (or ``on_publish``) hook to veto a job; the job is not
    published."""


class PublicationHeld(HookControl):
    """Raised by an ``on_publish`` hook that took the message over: it stored the final
    Publication itself (a far-future job held until it is due, a fair job queued behind
    its tenant's others) and will send it later, as it is. The caller does not send it,
    and no later ``on_publish`` hook sees it, so a hook that holds runs after every hook
    that changes the message (the ``auth`` plugin signs at priority -2000)."""


class RetryRequested(HookControl):
    """Raised by an ``on_error`` hook: re-publish the task after ``countdown`` seconds
    (a Celery ``Task.retry``; no worker slot sleeps)."""

    def __init__(self, countdown: float, reason: str = "") -> None:
        super().__init__(reason or f"retry in {countdown:g}s")
        self.countdown = countdown


class StartupRefused(HookControl):
    """Raised by ``on_worker_start``: the worker must not start (the message says why)."""


class PaymentRejected(SubmissionRejected):
    """The job's payment is missing, in the wrong currency, or below its worst-case cost."""


class ConsensusUnavailable(SubmissionRejected):
    """A consensus job needs ``n`` distinct workers (serving its queue, running the
    ``consensus`` plugin) and fewer answer: it is refused at submit, never published."""


class GPUUnavailable(SubmissionRejected):
    """No registered worker serving a GPU job's queue has the cards it asks for (type,
    VRAM, compute capability, CUDA version, count): refused at submit rather than left
    waiting in a queue nobody can take it from."""


class JobRejected(HookControl):
    """Raised by an ``on_execute`` hook to veto a job; it is marked rejected and never run."""


class QueueFull(SubmissionRejected):
    """The job's queue already holds as many jobs as the scheduling plugin allows."""


class JobDeferred(HookControl):
    """Raised by an ``on_execute`` hook: not now. The same message (same attempt,
    headers, queue and priority) is published again ``countdown`` seconds later and
    this delivery ends without running, so no worker slot waits."""

    def __init__(self, countdown: float, reason: str = "") -> None:
        super().__init__(reason or f"deferred for {countdown:g}s")
        self.countdown = countdown


class DuplicateDelivery(HookControl):
    """Raised by an ``on_execute`` hook: this delivery copies a message that was already
    accepted (a replay). It is acknowledged and dropped without storing anything, so
    the result of the original, under the same task id, stands."""
