"""Improved delegated proof of stake: who produces which slot, who is dropped, what is final.

Everything here is a pure function of the chain: every node folds the same blocks
into the same `ConsensusState` and so agrees on the schedule without talking.
See docs/consensus.md for the rules and parameters.
"""

from core.consensus.params import Params
from core.consensus.state import ConsensusState, shuffle

__all__ = ["ConsensusState", "Params", "shuffle"]
