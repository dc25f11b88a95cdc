"""Keyed tokens: the only form in which a symptom profile is stored and matched.

Every token is HMAC-SHA256 under the node's matching key of a domain-separated message naming
what it stands for (a term, the whole symptom set, a diagnosis code or category, an age band or a
pair of adjacent bands, a sex), cut to 128 bits and written in unpadded base64url (22 characters).
Equal inputs give equal tokens under one key, which is what lets the node match profiles without
holding any of them in clear; see docs/matching.md for what that does and does not hide.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NoReturn, cast

from core.encoding import b64e
from core.errors import InvalidProfile
from core.matching.graph import HpoGraph
from core.matching.profile import AGE_BANDS, MAX_TERMS, SEXES, SymptomProfile, normal_diagnosis

TOKEN_BYTES = 16
TOKEN_CHARS = 22  # unpadded base64url of TOKEN_BYTES
_TOKEN_LIST = re.compile(rf"(?:[A-Za-z0-9_-]{{{TOKEN_CHARS}}}\n)*")
MIN_KEY_BYTES = 16
FORMAT_VERSION = 1
_DOMAIN = b"medledger/matching/v1\n"
_MAX_ANCESTORS = 4096  # above any real closure: 50 terms of at most 41 tokens each


def _check_tokens(values: Collection[object], what: str) -> None:
    # One regex over all of them: a profile has dozens of tokens and an index loads 100,000 profiles.
    try:
        joined = "\n".join(cast("Collection[str]", values))
    except TypeError:
        raise InvalidProfile(f"{what} is not a token") from None
    if values and (
        set(map(len, cast("Collection[str]", values))) != {TOKEN_CHARS} or not _TOKEN_LIST.fullmatch(joined + "\n")
    ):
        raise InvalidProfile(f"{what} is not a token")


def _token_set(values: object, what: str, limit: int) -> frozenset[str]:
    """A JSON list as a set; TokenProfile checks the tokens themselves."""
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InvalidProfile(f"{what} must be a list of tokens")
    if len(values) > limit:
        raise InvalidProfile(f"{what} holds more than {limit} tokens")
    return frozenset(values)


@dataclass(frozen=True)
class TokenProfile:
    """A symptom profile as keyed tokens: what the database stores and the index matches on.

    `terms` are the tokens of the chosen symptoms, `closure` those of the symptoms and all their
    ancestors (a superset of `terms`), `symptom_set` one token for the whole set (exact mode).
    `age_near` holds the tokens of the two band pairs (one at either end) the age band belongs to.
    Construction checks the shape and raises InvalidProfile; it cannot tell which key made it.
    """

    symptom_set: str
    terms: frozenset[str]
    closure: frozenset[str]
    diagnosis: str | None = None
    diagnosis_category: str | None = None
    age_band: str | None = None
    age_near: frozenset[str] = field(default_factory=frozenset)
    sex: str | None = None

    def __post_init__(self) -> None:
        for name in ("terms", "closure", "age_near"):
            values = getattr(self, name)
            if not isinstance(values, frozenset):
                raise InvalidProfile(f"{name} must be a frozenset of tokens")
            _check_tokens(values, name)
        if not self.terms or len(self.terms) > MAX_TERMS:
            raise InvalidProfile(f"a profile holds 1 to {MAX_TERMS} symptoms")
        if not self.terms <= self.closure:
            raise InvalidProfile("closure must include every term")
        _check_tokens([self.symptom_set], "symptom_set")
        for name in ("diagnosis", "diagnosis_category", "age_band", "sex"):
            value = getattr(self, name)
            if value is not None:
                _check_tokens([value], name)
        if (self.diagnosis is None) != (self.diagnosis_category is None):
            raise InvalidProfile("diagnosis and diagnosis_category come together")
        if (self.age_band is None) != (not self.age_near) or len(self.age_near) > 2:
            raise InvalidProfile("age_band comes with one or two age_near tokens")

    def to_json(self) -> dict[str, Any]:
        """The stored form: tokens only, each list sorted (so equal profiles give equal JSON)."""
        return {
            "v": FORMAT_VERSION,
            "set": self.symptom_set,
            "terms": sorted(self.terms),
            "ancestors": sorted(self.closure - self.terms),
            "diagnosis": self.diagnosis,
            "diagnosis_category": self.diagnosis_category,
            "age_band": self.age_band,
            "age_near": sorted(self.age_near),
            "sex": self.sex,
        }

    @classmethod
    def from_json(cls, data: object) -> TokenProfile:
        """Inverse of `to_json`; raises InvalidProfile for anything else."""
        keys = {"v", "set", "terms", "ancestors", "diagnosis", "diagnosis_category", "age_band", "age_near", "sex"}
        if not isinstance(data, dict) or set(data) != keys:
            raise InvalidProfile("not a token profile")
        if type(data["v"]) is not int or data["v"] != FORMAT_VERSION:
            raise InvalidProfile(f"unknown token profile version {repr(data['v'])[:20]}")
        terms = _token_set(data["terms"], "terms", MAX_TERMS)
        return cls(
            symptom_set=data["set"],
            terms=terms,
            closure=terms | _token_set(data["ancestors"], "ancestors", _MAX_ANCESTORS),
            diagnosis=data["diagnosis"],
            diagnosis_category=data["diagnosis_category"],
            age_band=data["age_band"],
            age_near=_token_set(data["age_near"], "age_near", 2),
            sex=data["sex"],
        )

    def __repr__(self) -> str:
        return f"TokenProfile(<{len(self.terms)} terms>)"


class Tokenizer:
    """Turns symptom profiles into tokens under one node's matching key.

    It also keeps, in memory only, what the index needs and the database must not hold: the
    information content of each term token and the way back from a term token to its HPO id.
    Holds the key, so it refuses to print or pickle.
    """

    def __init__(self, key: bytes, graph: HpoGraph) -> None:
        """Raises ValueError for a key that is not bytes of at least MIN_KEY_BYTES."""
        if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the matching key must be at least {MIN_KEY_BYTES} bytes")
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self._graph = graph
        self._term_token = {term: self._token(b"term", term) for term in graph}
        self._term_of = {token: term for term, token in self._term_token.items()}
        self._ic = MappingProxyType({token: graph.information_content(t) for t, token in self._term_token.items()})
        self._age_band = {band: self._token(b"age", band) for band in AGE_BANDS}
        pairs = [self._token(b"age-pair", f"{a}|{b}") for a, b in itertools.pairwise(AGE_BANDS)]
        self._age_near = {band: frozenset(pairs[max(i - 1, 0) : i + 1]) for i, band in enumerate(AGE_BANDS)}
        self._sex = {sex: self._token(b"sex", sex) for sex in SEXES}
        self._near_of_band = {self._age_band[band]: near for band, near in self._age_near.items()}
        self._sex_tokens = frozenset(self._sex.values())

    def _token(self, kind: bytes, value: str) -> str:
        mac = self._mac.copy()
        mac.update(_DOMAIN + kind + b"\0" + value.encode())
        return b64e(mac.digest()[:TOKEN_BYTES])

    @property
    def information_content(self) -> Mapping[str, int]:
        """Term token -> intrinsic IC of the term in micro-nats (read-only, in memory only)."""
        return self._ic

    def tokens(self, profile: SymptomProfile) -> TokenProfile:
        """The profile's tokens; raises InvalidCode for a term that is not an HPO phenotype."""
        closure: set[str] = set()
        for term in profile.terms:
            closure.update(self._term_token[a] for a in self._graph.ancestors(term))
        terms = frozenset(self._term_token[t] for t in profile.terms)
        diagnosis = category = None
        if profile.diagnosis is not None:
            code = normal_diagnosis(profile.diagnosis)
            diagnosis, category = self._token(b"diagnosis", code), self._token(b"diagnosis-category", code[:3])
        band = profile.age_band
        return TokenProfile(
            symptom_set=self._token(b"set", ",".join(sorted(profile.terms))),
            terms=terms,
            closure=frozenset(closure),
            diagnosis=diagnosis,
            diagnosis_category=category,
            age_band=None if band is None else self._age_band[band],
            age_near=frozenset() if band is None else self._age_near[band],
            sex=None if profile.sex is None else self._sex[profile.sex],
        )

    def term_for(self, token: str) -> str | None:
        """The HPO id a term token stands for, or None (another key, or not a term token)."""
        return self._term_of.get(token)

    def terms_for(self, tokens: Iterable[str]) -> list[str]:
        """The HPO ids of those `tokens` that are term tokens under this key, sorted."""
        return sorted(t for t in map(self.term_for, tokens) if t is not None)

    def check(self, profile: TokenProfile) -> None:
        """Raise InvalidProfile unless every symptom, age and sex token of `profile` is one this key
        makes, the age pairs those of its band. (A diagnosis token cannot be checked: any code may be.)"""
        ok = all(t in self._ic for t in profile.closure)
        if profile.age_band is not None:
            ok = ok and self._near_of_band.get(profile.age_band) == profile.age_near
        if profile.sex is not None:
            ok = ok and profile.sex in self._sex_tokens
        if not ok:
            raise InvalidProfile("token profile was not made with this matching key")

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "<Tokenizer (secret)>"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("Tokenizer holds the matching key and cannot be pickled")
