"""The HPO phenotype graph that symptom matching needs: each term's ancestors and information content.

Only descendants of "Phenotypic abnormality" (HP:0000118) are symptoms; that root itself is an
ancestor of every symptom and so carries no information, and it is left out of every closure.

Information content is intrinsic (Seco et al., 2004): IC(t) = ln(N / D(t)), where N is the number of
terms in the graph and D(t) the number of terms at or below t. It comes from the graph alone, so
every term has one, unlike annotation-based IC, which is zero for the many HPO terms no OMIM disease
is annotated with (7,557 of 18,694 in hpo3 1.5). ICs are kept as integers (micro-nats) so that sums
of them are exact and do not depend on the order they are added in.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from core.errors import InvalidCode

if TYPE_CHECKING:
    from collections.abc import Collection

IC_SCALE = 1_000_000  # integer IC units per nat


class HpoGraph:
    """Ancestor closures and information content of the terms below one root.

    Build it from a map of each term to its parents (`HpoGraph(parents, root)`) or from the
    packaged ontology (`HpoGraph.load()`).
    """

    def __init__(self, parents: Mapping[str, Collection[str]], root: str) -> None:
        """`parents` maps every term below `root` to its parents; parents outside the map (above the
        root, or in other branches) are ignored. Raises InvalidCode when `root` is not in the map
        or a term is its own ancestor."""
        if root not in parents:
            raise InvalidCode(f"root {root!r} is not in the graph")
        self._root = root
        closures: dict[str, frozenset[str]] = {}

        def closure(term: str, path: frozenset[str]) -> frozenset[str]:
            found = closures.get(term)
            if found is not None:
                return found
            if term in path:
                raise InvalidCode(f"HPO term {term!r} is its own ancestor")
            inner = path | {term}
            result = frozenset({term}).union(*(closure(p, inner) for p in parents[term] if p in parents))
            closures[term] = result
            return result

        for term in parents:
            closure(term, frozenset())
        below = {term: 0 for term in parents}
        for members in closures.values():
            for ancestor in members:
                below[ancestor] += 1
        total = len(parents)
        self._ic = {term: round(math.log(total / count) * IC_SCALE) for term, count in below.items()}
        self._closures = {term: members - {root} for term, members in closures.items() if term != root}

    @classmethod
    def load(cls) -> HpoGraph:
        """The graph of HPO phenotypic abnormalities from the `hpo3` package; built once per process
        (the ontology itself is shared with `core.clinical`)."""
        with _load_lock:
            return _load()

    @property
    def root(self) -> str:
        return self._root

    def __contains__(self, term: object) -> bool:
        return term in self._closures

    def __iter__(self) -> Iterator[str]:
        """The terms (every term below the root, not the root itself), in no particular order."""
        return iter(self._closures)

    def __len__(self) -> int:
        return len(self._closures)

    def ancestors(self, term: str) -> frozenset[str]:
        """`term` and all its ancestors below the root; raises InvalidCode for a term not in the graph."""
        found = self._closures.get(term)
        if found is None:
            raise InvalidCode(f"unknown HPO term {str(term)[:12]!r}")
        return found

    def information_content(self, term: str) -> int:
        """Intrinsic IC of `term` in micro-nats (0 for the root); raises InvalidCode for an unknown term."""
        found = self._ic.get(term)
        if found is None:
            raise InvalidCode(f"unknown HPO term {str(term)[:12]!r}")
        return found


_load_lock = threading.Lock()


@functools.cache
def _load() -> HpoGraph:
    from core.clinical.codes import PHENOTYPIC_ABNORMALITY, load_hpo_ontology

    ontology = load_hpo_ontology()
    root = ontology.hpo(PHENOTYPIC_ABNORMALITY)
    terms = [term for term in ontology if term == root or term.child_of(root)]
    return HpoGraph({term.id: [parent.id for parent in term.parents] for term in terms}, root.id)
