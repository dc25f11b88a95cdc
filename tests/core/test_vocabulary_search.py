"""Search-as-you-type over the vocabularies: ICD-10-CM by code or words, HPO by name or everyday phrase."""

from __future__ import annotations

import time

import pytest

from core.clinical import Diagnosis, SymptomMatch, Vocabulary, load_lay_terms, load_vocabulary
from core.clinical.codes import load_hpo_synonyms


@pytest.fixture(scope="module")
def vocabulary() -> Vocabulary:
    return load_vocabulary()


# The everyday phrase table


def test_every_lay_term_is_a_known_symptom(vocabulary):
    terms = load_lay_terms()
    assert len(terms) >= 60
    unknown = [term for term in terms if vocabulary.symptom(term).id != term]
    assert unknown == []


def test_lay_phrases_are_lower_case_and_each_used_once():
    phrases = [p for ps in load_lay_terms().values() for p in ps]
    assert len(phrases) >= 100
    assert all(p == p.lower().strip() and p for p in phrases)
    assert len(phrases) == len(set(phrases))


# The HPO's own synonyms (scripts/hpo_synonyms.py)


def test_every_synonym_is_for_a_known_symptom_and_differs_from_its_name(vocabulary):
    synonyms = load_hpo_synonyms()
    assert sum(map(len, synonyms.values())) > 15_000
    names = vocabulary.hpo_names()
    assert [term for term in synonyms if term not in names] == []
    assert [t for term, texts in synonyms.items() for t in texts if t.casefold() == names[term].casefold()] == []


@pytest.mark.parametrize(
    ("text", "term", "synonym"),
    [
        ("dyspnoea", "HP:0002094", "Dyspnoea"),  # British spelling
        ("difficulty breathing", "HP:0002094", "Difficulty breathing"),
        ("oedema", "HP:0000969", "Oedema"),
    ],
)
def test_the_hpo_synonyms_find_the_term_and_say_which_matched(vocabulary, text, term, synonym):
    first = vocabulary.search_symptoms(text)[0]
    assert (first.id, first.matched) == (term, synonym)


def test_a_phrase_given_twice_is_kept_once_from_the_first_table(vocabulary):
    """Everyday phrases come before the synonyms: "shortness of breath" is in both tables."""
    assert "Shortness of breath" in load_hpo_synonyms()["HP:0002094"]
    found = vocabulary.search_symptoms("shortness of breath")
    assert found[0] == SymptomMatch("HP:0002094", "Dyspnea", "shortness of breath")
    assert [m.id for m in found].count("HP:0002094") == 1


@pytest.mark.parametrize(
    ("text", "term", "name"),
    [
        ("short of breath", "HP:0002094", "Dyspnea"),
        ("tired", "HP:0012378", "Fatigue"),
        ("stomach ache", "HP:0002027", "Abdominal pain"),
        ("dizzy", "HP:0002321", "Vertigo"),
        ("Sore Throat", "HP:0025439", "Pharyngitis"),
        ("pins and needles", "HP:0003401", "Paresthesia"),
    ],
)
def test_everyday_words_find_the_term_and_say_which_phrase_matched(vocabulary, text, term, name):
    first = vocabulary.search_symptoms(text)[0]
    assert first == SymptomMatch(term, name, text.lower())


def test_a_phrase_being_typed_finds_its_term(vocabulary):
    assert SymptomMatch("HP:0002094", "Dyspnea", "short of breath") in vocabulary.search_symptoms("short of bre")


def test_the_name_wins_over_a_phrase_that_matches_no_better(vocabulary):
    # "dyspnea" is the name; no phrase is reported for it.
    assert vocabulary.search_symptoms("dyspnea")[0] == SymptomMatch("HP:0002094", "Dyspnea", None)


# Symptom ranking


def test_exact_name_first_then_names_starting_with_the_text(vocabulary):
    results = vocabulary.search_symptoms("fever", limit=50)
    assert results[0] == SymptomMatch("HP:0001945", "Fever")
    starting = [i for i, r in enumerate(results) if r.name.lower().startswith("fever")]
    others = [i for i, r in enumerate(results) if not r.name.lower().startswith("fever") and r.matched is None]
    assert starting and others and max(starting) < min(others)


def test_each_term_comes_once(vocabulary):
    results = vocabulary.search_symptoms("pain", limit=50)
    assert len({r.id for r in results}) == len(results) == 50


def test_words_match_the_start_of_words_in_any_order(vocabulary):
    results = vocabulary.search_symptoms("fev recurr")
    assert SymptomMatch("HP:0001954", "Recurrent fever") in results
    # "ever" starts no word of "Fever"
    assert SymptomMatch("HP:0001945", "Fever") not in vocabulary.search_symptoms("ever")


@pytest.mark.parametrize("text", ["HP:0002094", "hp:0002094", " HP:0002094 "])
def test_an_hpo_id_finds_its_term(vocabulary, text):
    assert vocabulary.search_symptoms(text) == [SymptomMatch("HP:0002094", "Dyspnea")]


@pytest.mark.parametrize("text", ["HP:0000001", "HP:9999999"], ids=["outside-phenotypes", "unknown"])
def test_an_id_that_is_not_a_symptom_finds_nothing(vocabulary, text):
    assert vocabulary.search_symptoms(text) == []


@pytest.mark.parametrize("text", ["", "  ", "!!", "---"])
def test_search_symptoms_nothing_to_search(vocabulary, text):
    assert vocabulary.search_symptoms(text) == []


# Diagnoses


def test_words_find_the_diagnosis_exact_description_first(vocabulary):
    results = vocabulary.search_diagnoses("asthma")
    assert results[0] == Diagnosis("J45", "Asthma")
    unspecified = vocabulary.search_diagnoses("unspecified asthma")
    assert Diagnosis("J45.909", "Unspecified asthma, uncomplicated") in unspecified
    assert all("asthma" in d.description.lower() for d in results)


def test_several_words_in_any_order(vocabulary):
    results = vocabulary.search_diagnoses("diabetes type 2")
    assert results[0] == Diagnosis("E11", "Type 2 diabetes mellitus")
    assert all({"type", "diabetes"} <= set(d.description.lower().replace(",", " ").split()) for d in results)


@pytest.mark.parametrize("text", ["J45", "j45", "J45.", "j45.9", "J459"])
def test_a_code_prefix_finds_the_code_and_those_under_it(vocabulary, text):
    results = vocabulary.search_diagnoses(text, limit=50)
    prefix = text.upper().replace(".", "")
    assert results
    assert all(d.code.replace(".", "").startswith(prefix) for d in results)
    assert results[0].code.replace(".", "") == prefix[: len(results[0].code.replace(".", ""))]
    lengths = [len(d.code) for d in results]
    assert lengths == sorted(lengths)


def test_a_whole_code_comes_first(vocabulary):
    assert vocabulary.search_diagnoses("j45909")[0] == Diagnosis("J45.909", "Unspecified asthma, uncomplicated")


def test_only_categories_and_subcategories(vocabulary):
    # Chapters and blocks ("J40-J4A") are not codes a record can hold.
    results = vocabulary.search_diagnoses("chronic lower respiratory", limit=50)
    assert results and all("-" not in d.code for d in results)
    assert all(vocabulary.diagnosis(d.code) == d for d in results)


@pytest.mark.parametrize("text", ["", "  ", "qwertyuiopzxcv", "Z99.999999", "%%"])
def test_search_diagnoses_nothing_found(vocabulary, text):
    assert vocabulary.search_diagnoses(text) == []


def test_limits(vocabulary):
    assert len(vocabulary.search_diagnoses("fracture", limit=7)) == 7
    assert len(vocabulary.search_symptoms("abnormal", limit=7)) == 7
    assert vocabulary.search_symptoms("abnormal", limit=3) == vocabulary.search_symptoms("abnormal", limit=7)[:3]


def test_a_query_is_well_under_20_ms(vocabulary):
    vocabulary.search_diagnoses("warm up")  # the ICD index is built on the first search
    queries = ["a", "pain", "short of breath", "asthma", "J45", "type 2 diabetes", "fracture of", "e"]
    start = time.perf_counter()
    for text in queries:
        vocabulary.search_symptoms(text)
        vocabulary.search_diagnoses(text)
    per_query = (time.perf_counter() - start) / (2 * len(queries))
    assert per_query < 0.020
