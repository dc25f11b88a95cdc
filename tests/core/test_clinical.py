"""ICD-10-CM diagnoses and HPO symptoms, from the packaged vocabularies (no network)."""

from __future__ import annotations

import pytest

from core.clinical import Diagnosis, Symptom, SymptomMatch, Vocabulary, load_vocabulary
from core.errors import CoreError, InvalidCode


@pytest.fixture(scope="module")
def vocabulary() -> Vocabulary:
    return load_vocabulary()


def test_load_vocabulary_is_cached(vocabulary):
    assert load_vocabulary() is vocabulary
    assert load_vocabulary() is load_vocabulary()


# Diagnoses


@pytest.mark.parametrize(
    "code", ["j45909", "J45909", "J45.909", " j45.909 "], ids=["lower", "undotted", "dotted", "spaces"]
)
def test_diagnosis_normalises_the_code(vocabulary, code):
    diagnosis = vocabulary.diagnosis(code)
    assert diagnosis == Diagnosis("J45.909", "Unspecified asthma, uncomplicated")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("J45", "J45"),
        ("e119", "E11.9"),
        ("U07.1", "U07.1"),
        ("Z99.89", "Z99.89"),
    ],
    ids=["category", "subcategory", "covid", "two-digit-extension"],
)
def test_diagnosis_categories_and_subcategories(vocabulary, code, expected):
    diagnosis = vocabulary.diagnosis(code)
    assert diagnosis.code == expected
    assert isinstance(diagnosis.description, str) and diagnosis.description


def test_diagnosis_descriptions(vocabulary):
    assert vocabulary.diagnosis("J45").description == "Asthma"
    assert vocabulary.diagnosis("U07.1").description == "COVID-19"


@pytest.mark.parametrize(
    ("code", "shown"),
    [
        ("ZZZ", "'ZZZ'"),
        ("", "''"),
        ("   ", "'   '"),
        ("J45.99999", "'J45.99999'"),
        ("J45.9090", "'J45.9090'"),
        ("J4", "'J4'"),
        ("A00-A09", "'A00-A09'"),
        ("J45.", "'J45.'"),
        ("J45 909", "'J45 909'"),
        ("HP:0001945", "'HP:0001945'"),
        (123, "'123'"),
        (None, "'None'"),
        (45.909, "'45.909'"),
        ("J45" + "9" * 40, "'J45999999999'"),
    ],
    ids=[
        "ZZZ",
        "empty",
        "blank",
        "too-long-extension",
        "unknown-subcategory",
        "too-short",
        "block-range",
        "trailing-dot",
        "inner-space",
        "hpo-id",
        "int",
        "none",
        "float",
        "very-long",
    ],
)
def test_invalid_diagnosis(vocabulary, code, shown):
    with pytest.raises(InvalidCode) as info:
        vocabulary.diagnosis(code)
    assert str(info.value) == f"unknown ICD-10-CM code {shown}"
    assert isinstance(info.value, CoreError)


# Symptoms


@pytest.mark.parametrize("term", ["HP:0001945", "hp:0001945", " HP:0001945\n"], ids=["exact", "lower", "spaces"])
def test_symptom_lookup(vocabulary, term):
    symptom = vocabulary.symptom(term)
    assert symptom == Symptom("HP:0001945", "Fever")
    assert symptom.name == "Fever"


def test_symptom_other_terms(vocabulary):
    assert vocabulary.symptom("HP:0001954").name == "Recurrent fever"
    assert vocabulary.symptom("HP:0011134").name == "Low-grade fever"


@pytest.mark.parametrize(
    ("term", "shown"),
    [
        ("HP:1", "'HP:1'"),
        ("HP:9999999", "'HP:9999999'"),
        ("HP:000194", "'HP:000194'"),
        ("HP:00019450", "'HP:00019450'"),
        ("HP_0001945", "'HP_0001945'"),
        ("0001945", "'0001945'"),
        ("fever", "'fever'"),
        ("", "''"),
        (None, "'None'"),
        (1945, "'1945'"),
    ],
    ids=["short", "unknown", "six-digits", "eight-digits", "underscore", "no-prefix", "name", "empty", "none", "int"],
)
def test_invalid_symptom(vocabulary, term, shown):
    with pytest.raises(InvalidCode) as info:
        vocabulary.symptom(term)
    assert str(info.value) == f"unknown HPO term {shown}"


def test_search_symptoms_fever(vocabulary):
    results = vocabulary.search_symptoms("fever")
    assert results
    assert results[0] == SymptomMatch("HP:0001945", "Fever")
    assert all("fever" in s.name.lower() or "fever" in (s.matched or "").lower() for s in results)
    assert SymptomMatch("HP:0001954", "Recurrent fever") in results
    assert all(isinstance(s, SymptomMatch) and s.id.startswith("HP:") for s in results)


def test_search_symptoms_sorted_shortest_first(vocabulary):
    """Labels (a name, or the other name that matched) starting with the words come first; each
    group shortest name first."""
    results = vocabulary.search_symptoms("fever", limit=30)
    starting = [s for s in results if (s.matched or s.name).lower().startswith("fever")]
    assert len(starting) > 1 and results[: len(starting)] == starting
    for group in (starting, results[len(starting) :]):
        keys = [(len(s.name), s.name) for s in group]
        assert keys == sorted(keys)


def test_search_symptoms_needs_every_word_in_any_case(vocabulary):
    results = vocabulary.search_symptoms("RECURRENT   fever")
    assert results
    assert SymptomMatch("HP:0001954", "Recurrent fever") in results
    assert all("recurrent" in s.name.lower() and "fever" in s.name.lower() for s in results)
    assert SymptomMatch("HP:0001945", "Fever") not in results


def test_search_symptoms_limit(vocabulary):
    assert len(vocabulary.search_symptoms("abnormality")) == 20
    assert len(vocabulary.search_symptoms("abnormality", limit=3)) == 3
    assert vocabulary.search_symptoms("abnormality", limit=3) == vocabulary.search_symptoms("abnormality")[:3]


@pytest.mark.parametrize("text", ["", "   ", "\n\t"], ids=["empty", "spaces", "whitespace"])
def test_search_symptoms_blank_text(vocabulary, text):
    assert vocabulary.search_symptoms(text) == []


def test_search_symptoms_no_match(vocabulary):
    assert vocabulary.search_symptoms("qwertyuiopzxcv") == []


@pytest.mark.parametrize(
    "term", ["HP:0000001", "HP:0000118", "HP:0000005"], ids=["all", "phenotype-root", "inheritance"]
)
def test_invalid_symptom_outside_phenotypic_abnormality(vocabulary: Vocabulary, term: str) -> None:
    with pytest.raises(InvalidCode, match="unknown HPO term"):
        vocabulary.symptom(term)


def test_concurrent_first_lookups_in_a_fresh_process() -> None:
    """Web workers run threads: the first lookups after start must not race the libraries' lazy loading."""
    import subprocess
    import sys

    script = """
import threading
from core.clinical import load_vocabulary
codes = ["J45909", "I10", "E119", "S83209A", "G43909", "R059", "J45.909", "E11.9"] * 4
errors, results = [], []
def look(code):
    try:
        results.append(load_vocabulary().diagnosis(code).code)
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=look, args=(c,)) for c in codes]
for t in threads: t.start()
for t in threads: t.join()
print(len(results), errors)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "32 []"
