"""Consortium parameters, fixed in the genesis block."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from core.errors import InvalidTransaction


@dataclass(frozen=True)
class Params:
    delegates: int = 1  # K: delegates per epoch
    slot_ms: int = 2000  # one slot, one block at most
    epoch_slots: int = 60  # slots per epoch; delegates are re-elected at each epoch start
    miss_limit: int = 3  # consecutive missed slots that drop a delegate at once
    genesis_ms: int = 0  # start of slot 0

    def __post_init__(self) -> None:
        if not (1 <= self.delegates <= 101 and self.slot_ms >= 100 and self.epoch_slots >= self.delegates):
            raise InvalidTransaction("consensus parameters out of range")
        if self.miss_limit < 1 or self.genesis_ms < 0:
            raise InvalidTransaction("consensus parameters out of range")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> Params:
        fields = {"delegates", "slot_ms", "epoch_slots", "miss_limit", "genesis_ms"}
        if not isinstance(data, dict) or set(data) != fields:
            raise InvalidTransaction("params must have exactly " + ", ".join(sorted(fields)))
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in data.values()):
            raise InvalidTransaction("params must be whole numbers")
        return cls(**data)

    def slot_of(self, timestamp_ms: int) -> int:
        return (timestamp_ms - self.genesis_ms) // self.slot_ms

    def slot_start(self, slot: int) -> int:
        return self.genesis_ms + slot * self.slot_ms

    @property
    def quorum(self) -> int:
        """More than two thirds of the delegates."""
        return self.delegates * 2 // 3 + 1
