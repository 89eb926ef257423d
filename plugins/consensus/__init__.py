"""The ``consensus`` plugin: k-of-n replicated jobs (see :mod:`plugins.consensus.plugin`)."""

from plugins.consensus.config import ConsensusConfig
from plugins.consensus.fleet import CeleryFleet, Fleet
from plugins.consensus.plugin import ConsensusPlugin
from plugins.consensus.vote import Tally, canonical_digest, canonical_form, tally, votes

__all__ = ["CeleryFleet", "ConsensusConfig", "ConsensusPlugin", "Fleet", "Tally",
           "canonical_digest", "canonical_form", "tally", "votes"]
