"""GPU cards as workers advertise them, and whether a card meets a job's requirements.

A worker's cards come from ``nvidia-smi`` or from ``SANDRUN_GPUS`` (hosts without it,
and tests), in either of two forms that :func:`parse_gpus` reads:

- compact: comma-separated ``type[:vram_gb[:compute_capability[:cuda_version]]][*count]``,
  e.g. ``a100:40:8.0:12.2*2,t4:16:7.5:12.0`` (an empty field is unknown: ``t4::7.5``);
- JSON: a list of objects with ``type`` and optionally ``count``, ``vram_gb`` (or
  ``memory_mb``), ``compute_capability`` and ``cuda_version``.

Matching is never a guess: a requirement a card does not state (say its CUDA version)
is a requirement that card does not meet. VRAM is in GiB (``memory_mb / 1024``), as
``nvidia-smi`` counts it; a CUDA version is the newest one the card's driver runs,
so a card meets any version up to its own.

Queues are capability *classes*, so that their number stays small whatever the fleet:
a VRAM need is rounded down to a bucket of :data:`VRAM_BUCKETS`, and a card serves
every bucket up to its own VRAM (see :func:`worker.protocol.job_queue`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints, ValidationError, field_validator

from worker.models.job import GPURequirements
from worker.models.limits import FROZEN

#: VRAM classes (GiB) of the GPU queues: ``<queue>.gpu[.<type>].vram<bucket>``.
VRAM_BUCKETS = (8, 16, 24, 40, 80)
#: Most cards one SANDRUN_GPUS entry may declare (a typo such as ``*400`` is refused).
MAX_COUNT = 64
_ENTRY = re.compile(r"^(?P<fields>[^*]+)(\*(?P<count>\d+))?$")
FORMAT = ("SANDRUN_GPUS is a comma-separated list of type[:vram_gb[:compute_capability"
          "[:cuda_version]]][*count], e.g. 'a100:40:8.0:12.2*2,t4:16:7.5:12.0', or a JSON "
          "list of {\"type\", \"count\", \"vram_gb\", \"compute_capability\", \"cuda_version\"}")

Capability = Annotated[str, StringConstraints(pattern=r"^\d{1,2}\.\d{1,2}$")]
Version = Annotated[str, StringConstraints(pattern=r"^\d{1,4}(\.\d{1,4}){0,2}$")]


class GPUCard(BaseModel):
    """One card as a worker advertises it (in its registry entry) and matches jobs with."""

    model_config = FROZEN
    type: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
    vram_gb: float | None = Field(default=None, gt=0, le=4096)
    compute_capability: Capability | None = None
    cuda_version: Version | None = None

    def spec(self) -> str:
        """The card in SANDRUN_GPUS's compact form: ``a100:40:8.0:12.2``."""
        vram = f"{self.vram_gb:g}" if self.vram_gb is not None else ""
        return ":".join((self.type, vram, self.compute_capability or "",
                         self.cuda_version or "")).rstrip(":")

    def describe(self) -> str:
        """The card in words, for error messages: ``a100 (40 GB, cc 8.0, CUDA 12.2)``."""
        facts = [f"{self.vram_gb:g} GB" if self.vram_gb is not None else "VRAM unknown",
                 f"cc {self.compute_capability or 'unknown'}",
                 f"CUDA {self.cuda_version or 'unknown'}"]
        return f"{self.type} ({', '.join(facts)})"


class _Declared(GPUCard):
    """One JSON entry of SANDRUN_GPUS: a card and how many of it."""

    count: int = Field(default=1, ge=1, le=MAX_COUNT)
    memory_mb: int | None = Field(default=None, ge=1)

    @field_validator("type", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        """Types are lowercase, as in queue names: ``A100`` is ``a100``."""
        return value.lower() if isinstance(value, str) else value


def version_tuple(version: str) -> tuple[int, ...]:
    """``"12.2"`` -> ``(12, 2, 0)``: versions compare as numbers, padded to three parts."""
    parts = [int(part) for part in version.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def parse_gpus(text: str) -> list[GPUCard]:
    """The cards ``text`` (a SANDRUN_GPUS value) declares, one per card (counts expanded).

    Raises ValueError naming the bad entry and the format."""
    text = text.strip()
    if text.startswith("["):
        try:
            entries = [_Declared.model_validate(item) for item in json.loads(text)]
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not a valid list of GPUs ({_reason(exc)}); {FORMAT}") from None
    else:
        entries = [_compact(entry.strip()) for entry in text.split(",") if entry.strip()]
    if not entries:
        raise ValueError(f"declares no GPU; unset it to detect GPUs with nvidia-smi. {FORMAT}")
    return [card for entry in entries for card in _expand(entry)]


def _reason(exc: Exception) -> str:
    """What was wrong, without echoing pydantic's input dump."""
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}"
                         for e in exc.errors())
    return str(exc).splitlines()[0][:200]


def _compact(entry: str) -> _Declared:
    """One compact entry, ``type:vram:cc:cuda*count``."""
    match = _ENTRY.match(entry)
    fields = match["fields"].split(":") if match else []
    if not match or len(fields) > 4:
        raise ValueError(f"GPU entry {entry[:64]!r} is not type[:vram_gb[:cc[:cuda]]][*count]; "
                         f"{FORMAT}")
    names = ("type", "vram_gb", "compute_capability", "cuda_version")
    given: dict[str, Any] = {name: value for name, value in zip(names, fields, strict=False)
                             if value}
    if match["count"]:
        given["count"] = int(match["count"])
    try:
        return _Declared.model_validate(given)
    except ValidationError as exc:
        raise ValueError(f"GPU entry {entry[:64]!r}: {_reason(exc)}; {FORMAT}") from None


def _expand(entry: _Declared) -> list[GPUCard]:
    """``count`` cards of one declared entry (``memory_mb`` becomes ``vram_gb``)."""
    vram = entry.vram_gb if entry.vram_gb is not None else (
        entry.memory_mb / 1024 if entry.memory_mb is not None else None)
    card = GPUCard(type=entry.type, vram_gb=vram,
                   compute_capability=entry.compute_capability, cuda_version=entry.cuda_version)
    return [card] * entry.count


def needed_vram_gb(need: GPURequirements) -> float | None:
    """The VRAM (GiB) a job needs: the larger of ``min_vram_gb`` and ``memory_mb``."""
    asked = [v for v in (need.min_vram_gb, need.memory_mb and need.memory_mb / 1024) if v]
    return max(asked) if asked else None


def vram_bucket(gb: float | None) -> int | None:
    """The largest bucket of :data:`VRAM_BUCKETS` at or below ``gb`` (None below the first)."""
    if gb is None:
        return None
    fitting = [bucket for bucket in VRAM_BUCKETS if bucket <= gb]
    return fitting[-1] if fitting else None


def unmet(card: GPUCard, need: GPURequirements) -> list[str]:
    """The requirements of ``need`` that ``card`` does not meet (empty: it meets them all)."""
    missing = []
    if need.type is not None and card.type != need.type.lower():
        missing.append(f"type {need.type}")
    vram = needed_vram_gb(need)
    if vram is not None and (card.vram_gb is None or card.vram_gb < vram):
        missing.append(f"min_vram_gb {vram:g}")
    cc = need.compute_capability
    if cc is not None and (card.compute_capability is None
                           or version_tuple(card.compute_capability) < version_tuple(cc)):
        missing.append(f"compute_capability >= {cc}")
    cuda = need.cuda_version
    if cuda is not None and (card.cuda_version is None
                             or version_tuple(card.cuda_version) < version_tuple(cuda)):
        missing.append(f"cuda_version >= {cuda}")
    return missing


def meets(card: GPUCard, need: GPURequirements) -> bool:
    """True when ``card`` meets every requirement of ``need``."""
    return not unmet(card, need)


def best_card(cards: Sequence[GPUCard], need: GPURequirements) -> GPUCard | None:
    """The card closest to ``need``: of the type it names if there is one, then with the
    fewest unmet requirements, then the most VRAM."""
    if not cards:
        return None
    wanted = need.type.lower() if need.type is not None else None
    return min(cards, key=lambda card: (wanted not in (None, card.type),
                                        len(unmet(card, need)), -(card.vram_gb or 0)))


def describe_need(need: GPURequirements) -> str:
    """A job's GPU requirements in words: ``1 GPU of type a100, min_vram_gb 24``."""
    facts = [f"{need.count} GPU(s)"]
    if need.type is not None:
        facts.append(f"type {need.type}")
    vram = needed_vram_gb(need)
    if vram is not None:
        facts.append(f"min_vram_gb {vram:g}")
    if need.compute_capability:
        facts.append(f"compute_capability >= {need.compute_capability}")
    if need.cuda_version:
        facts.append(f"cuda_version >= {need.cuda_version}")
    return ", ".join(facts)
