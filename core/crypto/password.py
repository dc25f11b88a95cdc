"""Keys derived from passwords (Argon2id)."""

from __future__ import annotations

from dataclasses import dataclass

from argon2.low_level import Type, hash_secret_raw


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost parameters; stored beside each wrapped key so they can be raised later."""

    time_cost: int = 3
    memory_kib: int = 65536
    parallelism: int = 2

    def to_dict(self) -> dict[str, int]:
        return {"t": self.time_cost, "m": self.memory_kib, "p": self.parallelism}

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> KdfParams:
        return cls(time_cost=data["t"], memory_kib=data["m"], parallelism=data["p"])


def derive_key(password: str, salt: bytes, params: KdfParams) -> bytes:
    """A 256-bit key-encryption key from a password and a per-user salt."""
    return hash_secret_raw(
        password.encode("utf-8"),
        salt,
        time_cost=params.time_cost,
        memory_cost=params.memory_kib,
        parallelism=params.parallelism,
        hash_len=32,
        type=Type.ID,
    )
