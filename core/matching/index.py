"""An in-memory index of token profiles answering exact and ranked match queries.

Ranked score of a candidate c for a query q (both token profiles; docs/matching.md):

    sim(q, c)  = IC(Q & C) / IC(Q | C)          simGIC over the ancestor closures Q, C
    score(q, c) = (ws * sim + wd * dx + wa * age + wx * sex) / (ws + the weights of the
                  attributes at least one of q and c gives)

where dx is 1 for the same ICD-10-CM code, 1/2 for the same 3-character category, age 1 for the
same band and 1/2 for adjacent bands, sex 1 when equal, and an attribute only one side gives
scores 0. The score is symmetric and in [0, 1].

Ranked queries find candidates through an inverted index from closure token to profiles, one per
size class of profiles (closure IC). They walk the query's tokens from the rarest to the most
common, bound the score of each profile the first time one of its tokens comes up and score it in
full only if the bound can make the answer, and stop as soon as the tokens still to come carry
together too little information for a profile that shares only those to reach the threshold, or
to beat the worst of the best `limit` found so far (size and prefix filtering with a rising
threshold; docs/matching.md). Every bound is safe, so the answer is exactly that of scoring every
profile (`score_all`), ties included, only faster.

Memory: each term token is a small integer inside the index (its place in the tokenizer's IC
table); a profile keeps its closure as a sorted array of those (2 bytes each), and the postings are
arrays of profile ids (8 bytes each) rather than sets. Attribute tokens, which few profiles differ
in, are kept once (interned). About 1 KB per profile in all (bench/matching.py measures it).
"""

from __future__ import annotations

import heapq
import math
import threading
from array import array
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from core.matching.tokens import Tokenizer, TokenProfile

DIAGNOSIS_CATEGORY_CREDIT = 0.5
ADJACENT_AGE_CREDIT = 0.5
SIZE_RATIO = 1.25  # profiles are indexed by size class: closure IC within a factor of this
_SAFETY = 1e-9  # relative margin that keeps float rounding from dropping a token the bound needs

_LOG_RATIO = math.log(SIZE_RATIO)
_IDS = "q"  # array type of profile ids: signed 64-bit, as database ids are
_T = TypeVar("_T")


@dataclass(frozen=True)
class Weights:
    """Weights of the attributes in the ranked score; symptoms must weigh more than nothing."""

    symptoms: float = 0.70
    diagnosis: float = 0.15
    age: float = 0.10
    sex: float = 0.05

    def __post_init__(self) -> None:
        if not self.symptoms > 0 or min(self.diagnosis, self.age, self.sex) < 0:
            raise ValueError("weights must be >= 0, and the symptoms' > 0")


WEIGHTS = Weights()


@dataclass(frozen=True)
class Match:
    """A profile that matches a query: its id, score in [0, 1] and the term tokens both chose."""

    profile_id: int
    score: float
    shared: frozenset[str]


class _Entry:
    """A stored profile: its closure as sorted term numbers, its terms and attribute tokens as the
    index's own (shared) strings."""

    __slots__ = (
        "age_band",
        "age_near",
        "attributes",
        "category",
        "closure",
        "diagnosis",
        "ic",
        "sex",
        "size",
        "symptom_set",
        "terms",
    )

    def __init__(self, tp: TokenProfile, number: dict[str, int], ic: list[int], names: list[str], keep: _Keep) -> None:
        self.closure = array(_TERMS_TYPE, sorted(number[t] for t in tp.closure))
        self.terms = tuple(names[number[t]] for t in tp.terms)
        self.symptom_set = keep(tp.symptom_set)
        self.diagnosis, self.category = keep(tp.diagnosis), keep(tp.diagnosis_category)
        self.age_band, self.age_near, self.sex = keep(tp.age_band), keep(tp.age_near), keep(tp.sex)
        # age_near follows the band
        self.attributes = keep((self.diagnosis, self.category, self.age_band, self.sex))
        self.ic = sum(ic[t] for t in self.closure)  # IC of the whole closure
        self.size = math.floor(math.log(self.ic) / _LOG_RATIO)  # size class


_TERMS_TYPE = "H"  # array type of term numbers: the HPO has fewer than 65,536 terms (checked below)


class _Keep:
    """One copy of each equal value (attribute tokens, their tuples): few profiles differ in them."""

    def __init__(self) -> None:
        self._kept: dict[object, object] = {}

    def __call__(self, value: _T) -> _T:
        if value is None:
            return value
        return self._kept.setdefault(value, value)  # type: ignore[return-value]


class MatchIndex:
    """Token profiles by integer id, with exact and ranked queries. Thread-safe.

    Only profiles made by `tokenizer` (the same key) can be put in; its token -> IC table is the
    one thing, besides the tokens, that scoring needs.
    """

    def __init__(self, tokenizer: Tokenizer, weights: Weights = WEIGHTS) -> None:
        self._tokenizer = tokenizer
        # Term token -> its number; number -> the tokenizer's own string (profiles loaded from JSON
        # share it) and its IC.
        self._names = list(tokenizer.information_content)
        if len(self._names) > 2 ** (8 * array(_TERMS_TYPE).itemsize):
            raise ValueError("too many terms for the index's term numbers")
        self._number = {token: n for n, token in enumerate(self._names)}
        self._ic = [tokenizer.information_content[token] for token in self._names]
        self._keep = _Keep()
        self._weights = weights
        self._entries: dict[int, _Entry] = {}
        self._postings: dict[int, dict[int, array[int]]] = {}  # size class -> term number -> ids
        self._by_set: dict[str, array[int]] = {}
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, profile_id: object) -> bool:
        return profile_id in self._entries

    def __iter__(self) -> Iterator[int]:
        """The ids in the index (a snapshot)."""
        with self._lock:
            return iter(list(self._entries))

    def put(self, profile_id: int, tp: TokenProfile) -> None:
        """Add or replace the profile `profile_id`; raises InvalidProfile if another key made `tp`."""
        self._tokenizer.check(tp)
        with self._lock:
            entry = self._entry(tp)
            self._discard(profile_id)
            self._entries[profile_id] = entry
            postings = self._postings.setdefault(entry.size, {})
            for term in entry.closure:
                postings.setdefault(term, array(_IDS)).append(profile_id)
            self._by_set.setdefault(entry.symptom_set, array(_IDS)).append(profile_id)

    def _entry(self, tp: TokenProfile) -> _Entry:
        return _Entry(tp, self._number, self._ic, self._names, self._keep)

    def remove(self, profile_id: int) -> bool:
        """Take the profile out at once; True if it was there."""
        with self._lock:
            return self._discard(profile_id)

    def _discard(self, profile_id: int) -> bool:
        entry = self._entries.pop(profile_id, None)
        if entry is None:
            return False
        postings = self._postings[entry.size]
        for term in entry.closure:
            _drop(postings, term, profile_id)
        if not postings:
            del self._postings[entry.size]
        _drop(self._by_set, entry.symptom_set, profile_id)
        return True

    def exact(self, tp: TokenProfile, limit: int, *, exclude: Collection[int] = ()) -> list[Match]:
        """Profiles with exactly the same symptom set (score 1), lowest id first, at most `limit`.
        Raises InvalidProfile if another key made `tp`, ValueError for a limit below 1."""
        _check_limit(limit)
        self._tokenizer.check(tp)
        with self._lock:
            ids = sorted(i for i in self._by_set.get(tp.symptom_set, ()) if i not in exclude)[:limit]
            return [Match(i, 1.0, frozenset(self._entries[i].terms)) for i in ids]

    def ranked(self, tp: TokenProfile, threshold: float, limit: int, *, exclude: Collection[int] = ()) -> list[Match]:
        """The `limit` best profiles scoring at least `threshold`, best first, ties by lower id;
        always the same answer as `score_all`. Raises InvalidProfile if another key made `tp`,
        ValueError for a threshold outside [0, 1] or a limit below 1."""
        _check_limit(limit)
        _check_threshold(threshold)
        self._tokenizer.check(tp)
        with self._lock:
            if self._symptoms_needed(tp, threshold) <= 0:  # attributes alone can reach it: no token to start from
                return self._best(tp, self._entries.items(), threshold, limit, exclude)
            return self._search(tp, threshold, limit, exclude)

    def score_all(
        self, tp: TokenProfile, threshold: float, limit: int, *, exclude: Collection[int] = ()
    ) -> list[Match]:
        """`ranked` by scoring every profile: the reference the index is tested and measured against."""
        _check_limit(limit)
        _check_threshold(threshold)
        self._tokenizer.check(tp)
        with self._lock:
            return self._best(tp, self._entries.items(), threshold, limit, exclude)

    def score(self, a: TokenProfile, b: TokenProfile) -> float:
        """The ranked score of two token profiles (symmetric, in [0, 1]); raises InvalidProfile if
        another key made either."""
        self._tokenizer.check(a)
        self._tokenizer.check(b)
        return self._scorer(a)(self._entry(b))

    def work(self, tp: TokenProfile, threshold: float, limit: int) -> tuple[int, int]:
        """How many profiles `ranked` looks at for this query, and how many of those it scores in
        full (both `len(self)` when it scores them all): what the index saves, for the benchmark."""
        with self._lock:
            if self._symptoms_needed(tp, threshold) <= 0:
                return len(self._entries), len(self._entries)
            work: list[int] = []
            self._search(tp, threshold, limit, (), work)
            return work[0], work[1]

    # --- ranked search ---------------------------------------------------------------------

    def _closure_ic(self, tp: TokenProfile) -> int:
        ic, number = self._ic, self._number
        return sum(ic[number[t]] for t in tp.closure)

    def _numbers(self, tp: TokenProfile) -> frozenset[int]:
        number = self._number
        return frozenset(number[t] for t in tp.closure)

    def _symptoms_needed(self, tp: TokenProfile, threshold: float) -> float:
        """The symptom similarity below which no profile can score `threshold` against `tp`.

        score >= T means ws * sim >= T * (ws + X) - X', where X weighs the attributes either side
        gives (at least those the query gives, Xq) and X' <= Xq is what they earned; so
        sim >= T - (1 - T) * Xq / ws."""
        w = self._weights
        given = (
            (w.diagnosis if tp.diagnosis is not None else 0.0)
            + (w.age if tp.age_band is not None else 0.0)
            + (w.sex if tp.sex is not None else 0.0)
        )
        return threshold - (1 - threshold) * given / w.symptoms

    def _search(
        self, tp: TokenProfile, threshold: float, limit: int, exclude: Collection[int], work: list[int] | None = None
    ) -> list[Match]:
        """Size and prefix filtering, one size class at a time, the classes nearest the query's first.

        With Q, C the closure ICs and I the IC they share, sim >= t needs C within [t*Q, Q/t]
        (sim <= min(Q, C) / max(Q, C)) and I >= t * (Q + C) / (1 + t). In a size class whose
        closures are at least L, a profile that shares with the query only tokens whose IC adds up
        to less than t * (Q + L) / (1 + t) therefore falls short; so once the query's tokens not
        yet walked add up to less than that, no profile of the class not yet scored can make the
        answer. t rises with the worst score kept once `limit` are kept.

        A profile met first at a token has none of the rarer tokens walked before it, which bounds
        its symptom similarity; with its attributes, compared at once, that bounds its score, and
        only a profile whose bound reaches the worst score kept is scored in full."""
        ic = self._ic
        q_ic = self._closure_ic(tp)
        q_terms = self._numbers(tp)
        q_size = math.log(q_ic) / _LOG_RATIO
        attributes = self._attribute_scorer(tp)
        score = self._scorer(tp)
        ws = self._weights.symptoms
        entries = self._entries
        kept: list[tuple[float, int]] = []  # min-heap of (score, -id): the worst kept on top
        floor = threshold
        needed = self._symptoms_needed(tp, floor)
        looked = full = 0
        credits: dict[tuple[str | None, ...], tuple[float, float]] = {}  # few profiles differ in attributes
        for size in sorted(self._postings, key=lambda c: (abs(c + 0.5 - q_size), c)):
            low, high = SIZE_RATIO**size * (1 - _SAFETY), SIZE_RATIO ** (size + 1) * (1 + _SAFETY)
            if high < needed * q_ic or low * needed > q_ic:
                continue
            postings = self._postings[size]
            order = sorted(q_terms, key=lambda t: (len(postings.get(t, ())), t))
            rest = sum(ic[t] for t in order)  # IC of the query's tokens not yet walked in this class
            seen: set[int] = set()
            for term in order:
                if rest < needed * (q_ic + low) / (1 + needed) * (1 - _SAFETY):
                    break
                # A profile first met at this token has none of the rarer ones: it shares at most `rest`.
                for pid in postings.get(term, ()):
                    if pid in seen:
                        continue
                    seen.add(pid)
                    if pid in exclude:
                        continue
                    entry = entries[pid]
                    known = credits.get(entry.attributes)
                    if known is None:
                        known = credits[entry.attributes] = attributes(entry)
                    credit, weight = known
                    most = min(rest, entry.ic)
                    if (ws * most / (q_ic + entry.ic - most) + credit) / weight * (1 + _SAFETY) < floor:
                        continue
                    full += 1
                    s = score(entry)
                    if s < floor:
                        continue
                    item = (s, -pid)
                    if len(kept) < limit:
                        heapq.heappush(kept, item)
                    elif item > kept[0]:
                        heapq.heapreplace(kept, item)
                    else:
                        continue
                    if len(kept) == limit and kept[0][0] > floor:
                        floor = kept[0][0]
                        needed = self._symptoms_needed(tp, floor)
                rest -= ic[term]
            looked += len(seen)
        if work is not None:
            work += [looked, full]
        best = sorted(kept, reverse=True)
        return [Match(-negative, s, _shared(tp, entries[-negative])) for s, negative in best]

    def _best(
        self,
        tp: TokenProfile,
        pool: Iterable[tuple[int, _Entry]],
        threshold: float,
        limit: int,
        exclude: Collection[int],
    ) -> list[Match]:
        score = self._scorer(tp)
        scored = ((s, i, e) for i, e in pool if i not in exclude and (s := score(e)) >= threshold)
        best = heapq.nsmallest(limit, scored, key=lambda item: (-item[0], item[1]))
        return [Match(i, s, _shared(tp, e)) for s, i, e in best]

    def _attribute_scorer(self, q: TokenProfile) -> Callable[[_Entry], tuple[float, float]]:
        """For a stored profile against `q`: what the attributes earn and the total weight, the
        symptoms' included (formula in the module docstring)."""
        w = self._weights
        q_dx, q_cat, q_age, q_near, q_sex = q.diagnosis, q.diagnosis_category, q.age_band, q.age_near, q.sex

        def attributes(c: _Entry) -> tuple[float, float]:
            total, weight = 0.0, w.symptoms
            if q_dx is not None or c.diagnosis is not None:
                weight += w.diagnosis
                if q_dx == c.diagnosis:
                    total += w.diagnosis
                elif q_cat == c.category:
                    total += w.diagnosis * DIAGNOSIS_CATEGORY_CREDIT
            if q_age is not None or c.age_band is not None:
                weight += w.age
                if q_age == c.age_band:
                    total += w.age
                elif q_near & c.age_near:
                    total += w.age * ADJACENT_AGE_CREDIT
            if q_sex is not None or c.sex is not None:
                weight += w.sex
                if q_sex == c.sex:
                    total += w.sex
            return total, weight

        return attributes

    def _scorer(self, q: TokenProfile) -> Callable[[_Entry], float]:
        """The ranked score of any stored profile against `q` (formula in the module docstring)."""
        ws = self._weights.symptoms
        ic = self._ic
        # The query's terms with their IC: a stored term looks itself up (None when not shared).
        q_ic_of = {t: ic[t] for t in self._numbers(q)}.get
        q_ic = self._closure_ic(q)
        attributes = self._attribute_scorer(q)

        def score(c: _Entry) -> float:
            shared = sum(filter(None, map(q_ic_of, c.closure)))
            credit, weight = attributes(c)
            return (ws * shared / (q_ic + c.ic - shared) + credit) / weight

        return score


def _shared(tp: TokenProfile, entry: _Entry) -> frozenset[str]:
    return frozenset(t for t in entry.terms if t in tp.terms)


def _drop(table: dict[_T, array[int]], key: _T, profile_id: int) -> None:
    members = table.get(key)
    if members is not None:
        members.remove(profile_id)  # a profile is in each of its lists once
        if not members:
            del table[key]


def _check_limit(limit: int) -> None:
    if not isinstance(limit, int) or limit < 1:
        raise ValueError("limit must be a positive integer")


def _check_threshold(threshold: float) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise ValueError("threshold must be in [0, 1]")
