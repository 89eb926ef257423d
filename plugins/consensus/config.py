"""Configuration of the ``consensus`` plugin (``SANDRUN_PLUGINS``, by name)."""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from plugins.consensus.vote import Digest
from worker import ConfigurationError


class ConsensusConfig(BaseModel):
    """How the workers' side of consensus jobs behaves.

    ``digest`` names a function ``"module:callable"`` of a replica's JobResult that
    returns its digest (or None when that replica does not vote); the default is
    :func:`plugins.consensus.vote.canonical_digest`. Every worker of a fleet must use
    the same one."""

    model_config = ConfigDict(extra="forbid")
    digest: str | None = Field(default=None, pattern=r"^[\w.]+:[\w.]+$",
                               description="'module:callable' digest of a replica's result")
    requeue_delay: float = Field(default=0.25, ge=0, le=60, description=(
        "seconds before a replica this worker must not run is offered to the fleet again"))
    max_requeues: int = Field(default=240, ge=1, description=(
        "times a replica is offered again before it is refused (counting against the "
        "quorum): no other worker took it"))
    cancel_grace: float = Field(default=1.0, ge=0, le=3600, description=(
        "seconds a replica still running when the vote settles may finish before it is "
        "terminated (terminating kills its pool process, which its worker restarts)"))
    record_ttl: float = Field(default=86400, gt=0, description=(
        "seconds the vote's records are kept (as long as Celery keeps results)"))


def load_digest(spec: str) -> Digest:
    """The digest function ``"module:callable"`` of the configuration."""
    module, _, attr = spec.partition(":")
    try:
        target: Any = importlib.import_module(module)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"consensus digest {spec!r} cannot be imported ({exc}); "
                                 "give 'module:callable' of an installed module") from None
    if not callable(target):
        raise ConfigurationError(f"consensus digest {spec!r} is not callable")
    digest: Digest = target
    return digest
