"""Symptom matching over keyed tokens: the HPO graph, profiles, tokens and the match index."""

from __future__ import annotations

import json
import math
import pickle
import random
import re

import pytest

from core.errors import CoreError, InvalidCode, InvalidProfile
from core.matching import (
    AGE_BANDS,
    MAX_TERMS,
    SEXES,
    WEIGHTS,
    HpoGraph,
    MatchIndex,
    SymptomProfile,
    Tokenizer,
    TokenProfile,
    Weights,
)

KEY = b"node matching key for the tests!"
OTHER_KEY = b"another node's matching key....."
FEVER = "HP:0001945"
TEMPERATURE = "HP:0004370"  # Abnormality of temperature regulation, Fever's parent
HEADACHE = "HP:0002315"
COUGH = "HP:0012735"
SEIZURE = "HP:0001250"

# A toy graph: R is the root; A and B below it; A1, A2 below A; B1 below B.
R, A, B, A1, A2, B1 = (f"HP:00000{n}" for n in range(10, 16))
TOY = {R: [], A: [R], B: [R], A1: [A], A2: [A], B1: [B]}


def profile(*terms: str, diagnosis: str | None = None, age: str | None = None, sex: str | None = None):
    return SymptomProfile(frozenset(terms), diagnosis, age, sex)


@pytest.fixture(scope="module")
def graph() -> HpoGraph:
    return HpoGraph.load()


@pytest.fixture(scope="module")
def tokenizer(graph) -> Tokenizer:
    return Tokenizer(KEY, graph)


@pytest.fixture(scope="module")
def toy_tokenizer() -> Tokenizer:
    return Tokenizer(KEY, HpoGraph(TOY, R))


@pytest.fixture
def index(tokenizer) -> MatchIndex:
    return MatchIndex(tokenizer)


# --- the HPO graph -----------------------------------------------------------------------------


def test_toy_graph_closures_and_information_content():
    graph = HpoGraph(TOY, R)
    assert set(graph) == {A, B, A1, A2, B1}
    assert graph.ancestors(A1) == {A1, A}  # the root carries no information and is left out
    assert graph.ancestors(B) == {B}
    # IC(t) = ln(N / terms at or below t), N = 6, in micro-nats
    assert graph.information_content(R) == 0
    assert graph.information_content(A) == round(math.log(6 / 3) * 1e6)
    assert graph.information_content(B) == round(math.log(6 / 2) * 1e6)
    assert graph.information_content(A1) == round(math.log(6) * 1e6)


def test_load_is_cached_and_holds_phenotypes_only(graph):
    assert HpoGraph.load() is graph
    assert graph.root == "HP:0000118"
    assert FEVER in graph and "HP:0000118" not in graph
    assert "HP:0000006" not in graph  # autosomal dominant inheritance is not a symptom
    fever = graph.ancestors(FEVER)
    assert FEVER in fever and TEMPERATURE in fever and "HP:0000118" not in fever
    assert graph.information_content(FEVER) > graph.information_content(TEMPERATURE) > 0


def test_invalid_graph_without_its_root():
    with pytest.raises(InvalidCode, match="root 'HP:0000099' is not in the graph"):
        HpoGraph(TOY, "HP:0000099")


def test_invalid_graph_with_a_cycle():
    with pytest.raises(InvalidCode, match="is its own ancestor"):
        HpoGraph({R: [], A: [R, A1], A1: [A]}, R)


def test_invalid_unknown_term_in_the_graph(graph):
    with pytest.raises(InvalidCode, match="unknown HPO term 'HP:9999999'"):
        graph.ancestors("HP:9999999")


# --- profiles ----------------------------------------------------------------------------------


def test_profile_attributes_are_optional():
    plain = profile(FEVER)
    assert (plain.diagnosis, plain.age_band, plain.sex) == (None, None, None)
    full = profile(FEVER, HEADACHE, diagnosis="j45.909", age="30-44", sex="female")
    assert full.terms == {FEVER, HEADACHE}


def test_profile_repr_hides_the_symptoms():
    shown = repr(profile(FEVER, HEADACHE, diagnosis="J45.909"))
    assert "HP:" not in shown and "J45" not in shown
    assert shown == "SymptomProfile(<2 terms>)"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"terms": frozenset()}, "a profile needs at least one symptom"),
        ({"terms": {FEVER}}, "terms must be a frozenset of HPO term ids"),
        ({"terms": frozenset({"fever"})}, "not an HPO term id: 'fever'"),
        ({"terms": frozenset({"HP:12345"})}, "not an HPO term id: 'HP:12345'"),
        ({"terms": frozenset(f"HP:{n:07d}" for n in range(MAX_TERMS + 1))}, "at most 50 symptoms, not 51"),
        ({"terms": frozenset({FEVER}), "diagnosis": "asthma"}, "not an ICD-10-CM code: 'asthma'"),
        ({"terms": frozenset({FEVER}), "age_band": "30-40"}, "age band must be one of 0-17, 18-29"),
        ({"terms": frozenset({FEVER}), "sex": "f"}, "sex must be one of female, male, other"),
    ],
    ids=["empty", "not-frozen", "name", "short-id", "too-many", "diagnosis", "age-band", "sex"],
)
def test_invalid_profile(kwargs, message):
    with pytest.raises(InvalidProfile, match=re.escape(message)):
        SymptomProfile(**kwargs)


def test_invalid_profile_is_a_core_error():
    assert issubclass(InvalidProfile, CoreError)


# --- tokens ------------------------------------------------------------------------------------


def test_tokens_are_keyed_and_deterministic(graph, tokenizer):
    p = profile(FEVER, HEADACHE, diagnosis="J45.909", age="30-44", sex="female")
    tp = tokenizer.tokens(p)
    assert tokenizer.tokens(p) == tp
    assert Tokenizer(KEY, graph).tokens(p) == tp
    other = Tokenizer(OTHER_KEY, graph).tokens(p)
    assert not (other.closure & tp.closure)
    assert other.symptom_set != tp.symptom_set and other.sex != tp.sex


def test_token_profile_shape(graph, tokenizer):
    tp = tokenizer.tokens(profile(FEVER, HEADACHE, age="0-17"))
    every = [tp.symptom_set, *tp.closure, tp.age_band, *tp.age_near]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", t) for t in every)
    assert len(set(every)) == len(every)  # a term's token is not the set's, a band's not a pair's
    assert tp.terms == tokenizer.tokens(profile(FEVER)).terms | tokenizer.tokens(profile(HEADACHE)).terms
    assert len(tp.terms) == 2
    assert tp.closure == {t for term in (FEVER, HEADACHE) for t in tokenizer.tokens(profile(term)).closure}
    assert len(tp.closure) == len(graph.ancestors(FEVER) | graph.ancestors(HEADACHE))
    assert len(tp.age_near) == 1  # the youngest band has one neighbour
    assert len(tokenizer.tokens(profile(FEVER, age="30-44")).age_near) == 2
    assert (tp.diagnosis, tp.diagnosis_category, tp.sex) == (None, None, None)


def test_term_for_maps_term_tokens_back_in_memory(graph, tokenizer):
    tp = tokenizer.tokens(profile(FEVER, HEADACHE))
    assert tokenizer.terms_for(tp.terms) == sorted([FEVER, HEADACHE])
    assert {tokenizer.term_for(t) for t in tp.closure} == graph.ancestors(FEVER) | graph.ancestors(HEADACHE)
    assert tokenizer.term_for(tp.symptom_set) is None
    assert Tokenizer(OTHER_KEY, graph).terms_for(tp.terms) == []


def test_symptom_set_token_ignores_order_and_attributes(tokenizer):
    one = tokenizer.tokens(profile(FEVER, HEADACHE, sex="male"))
    two = tokenizer.tokens(SymptomProfile(frozenset([HEADACHE, FEVER]), "R50.9", "75+", "female"))
    assert one.symptom_set == two.symptom_set
    assert tokenizer.tokens(profile(FEVER)).symptom_set != one.symptom_set


def test_diagnosis_tokens_at_code_and_category_level(tokenizer):
    def dx(code: str) -> TokenProfile:
        return tokenizer.tokens(profile(FEVER, diagnosis=code))

    assert dx("j45.909").diagnosis == dx("J45909").diagnosis
    assert dx("J45.909").diagnosis != dx("J45.0").diagnosis
    assert dx("J45.909").diagnosis_category == dx("J45.0").diagnosis_category == dx("J45").diagnosis_category
    assert dx("J45.909").diagnosis_category != dx("J44.9").diagnosis_category


def test_stored_json_has_no_symptom_or_attribute_in_clear(tokenizer):
    p = profile(FEVER, HEADACHE, COUGH, diagnosis="J45.909", age="45-59", sex="female")
    stored = json.dumps(tokenizer.tokens(p).to_json())
    for clear in ("HP:", "0001945", "0002315", "0012735", "J45", "45-59", "female", "Fever", "Headache"):
        assert clear not in stored
    assert TokenProfile.from_json(json.loads(stored)) == tokenizer.tokens(p)


def test_json_round_trip_without_attributes(tokenizer):
    tp = tokenizer.tokens(profile(SEIZURE))
    data = tp.to_json()
    assert data["v"] == 1 and data["diagnosis"] is None and data["age_near"] == []
    assert data["terms"] == sorted(tp.terms)
    assert TokenProfile.from_json(data) == tp
    assert "HP:" not in repr(tp)


def _stored(tokenizer: Tokenizer) -> dict:
    return tokenizer.tokens(profile(FEVER, diagnosis="J45.909", age="30-44", sex="male")).to_json()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: [d], "not a token profile"),
        (lambda d: {k: v for k, v in d.items() if k != "sex"}, "not a token profile"),
        (lambda d: {**d, "terms_clear": ["HP:0001945"]}, "not a token profile"),
        (lambda d: {**d, "v": 2}, "unknown token profile version 2"),
        (lambda d: {**d, "v": True}, "unknown token profile version True"),
        (lambda d: {**d, "terms": []}, "a profile holds 1 to 50 symptoms"),
        (lambda d: {**d, "terms": ["HP:0001945"]}, "terms is not a token"),
        (lambda d: {**d, "terms": [d["terms"][0][:-1]]}, "terms is not a token"),
        (lambda d: {**d, "terms": [d["terms"][0][:-1] + "="]}, "terms is not a token"),
        (lambda d: {**d, "terms": d["terms"][0]}, "terms must be a list of tokens"),
        (lambda d: {**d, "ancestors": [1, 2]}, "ancestors must be a list of tokens"),
        (lambda d: {**d, "set": None}, "symptom_set is not a token"),
        (lambda d: {**d, "diagnosis_category": None}, "diagnosis and diagnosis_category come together"),
        (lambda d: {**d, "age_near": []}, "age_band comes with one or two age_near tokens"),
        (lambda d: {**d, "age_near": [d["set"]] * 3}, "age_near holds more than 2 tokens"),
        (lambda d: {**d, "sex": "male"}, "sex is not a token"),
    ],
    ids=[
        "list",
        "missing-key",
        "extra-key",
        "version",
        "version-bool",
        "no-terms",
        "clear-term",
        "short-token",
        "padded-token",
        "terms-string",
        "ancestors-ints",
        "set-null",
        "half-diagnosis",
        "band-without-pairs",
        "three-pairs",
        "sex-in-clear",
    ],
)
def test_invalid_token_profile_json(tokenizer, change, message):
    with pytest.raises(InvalidProfile, match=re.escape(message)):
        TokenProfile.from_json(change(_stored(tokenizer)))


def test_invalid_token_profile_closure_without_its_terms(tokenizer):
    tp = tokenizer.tokens(profile(FEVER))
    with pytest.raises(InvalidProfile, match="closure must include every term"):
        TokenProfile(tp.symptom_set, tp.terms, tp.closure - tp.terms)


def test_invalid_unknown_or_non_phenotype_term(tokenizer):
    with pytest.raises(InvalidCode, match="unknown HPO term 'HP:9999999'"):
        tokenizer.tokens(profile(FEVER, "HP:9999999"))
    with pytest.raises(InvalidCode, match="unknown HPO term 'HP:0000006'"):
        tokenizer.tokens(profile("HP:0000006"))  # a mode of inheritance, not a symptom


def test_invalid_short_key(graph):
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Tokenizer(b"short", graph)
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Tokenizer("a text key of enough length", graph)  # type: ignore[arg-type]


def test_tokenizer_keeps_its_key_secret(tokenizer):
    assert repr(tokenizer) == str(tokenizer) == "<Tokenizer (secret)>"
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(tokenizer)
    with pytest.raises(TypeError):
        hash(tokenizer)


# --- exact mode --------------------------------------------------------------------------------


def test_exact_mode_matches_the_same_symptom_set_only(tokenizer, index):
    index.put(1, tokenizer.tokens(profile(FEVER, HEADACHE, sex="male")))
    index.put(2, tokenizer.tokens(profile(HEADACHE, FEVER, diagnosis="R50.9", age="75+")))
    index.put(3, tokenizer.tokens(profile(FEVER, HEADACHE, COUGH)))
    index.put(4, tokenizer.tokens(profile(FEVER)))
    index.put(5, tokenizer.tokens(profile(FEVER, HEADACHE)))
    query = tokenizer.tokens(profile(FEVER, HEADACHE, sex="female"))
    found = index.exact(query, 10)
    assert [m.profile_id for m in found] == [1, 2, 5]
    assert all(m.score == 1.0 and m.shared == query.terms for m in found)
    assert tokenizer.terms_for(found[0].shared) == [FEVER, HEADACHE]
    assert [m.profile_id for m in index.exact(query, 2)] == [1, 2]
    assert [m.profile_id for m in index.exact(query, 10, exclude={2, 9})] == [1, 5]
    assert index.exact(tokenizer.tokens(profile(COUGH)), 10) == []


def test_invalid_limit_and_threshold(tokenizer, index):
    query = tokenizer.tokens(profile(FEVER))
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        index.exact(query, 0)
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        index.ranked(query, 0.5, 0)
    with pytest.raises(ValueError, match=re.escape("threshold must be in [0, 1]")):
        index.ranked(query, 1.5, 10)
    with pytest.raises(ValueError, match=re.escape("threshold must be in [0, 1]")):
        index.score_all(query, -0.1, 10)


# --- ranked mode -------------------------------------------------------------------------------


def test_ranked_score_formula_on_the_toy_graph(toy_tokenizer):
    index = MatchIndex(toy_tokenizer)
    ln = math.log
    sim = ln(2) / (ln(6) + ln(2) + ln(6) + ln(2) - ln(2))  # {A1, A} vs {A2, A}: share A
    q = toy_tokenizer.tokens(profile(A1, diagnosis="J45.909", age="30-44", sex="female"))
    cases = [
        (profile(A1), (0.7 * 1 + 0) / 1.0),  # same symptoms, no attributes of its own: 0 for each
        (profile(A2, diagnosis="J45.909", age="30-44", sex="female"), 0.7 * sim + 0.3),
        (profile(A2, diagnosis="J45.0", age="45-59", sex="female"), 0.7 * sim + 0.15 / 2 + 0.1 / 2 + 0.05),
        (profile(A2, diagnosis="J44.9", age="60-74", sex="male"), 0.7 * sim),
        (profile(B1, diagnosis="J45.909", age="30-44", sex="female"), 0.3),
    ]
    for other, expected in cases:
        assert index.score(q, toy_tokenizer.tokens(other)) == pytest.approx(expected, abs=1e-6)
    bare = toy_tokenizer.tokens(profile(A1))
    assert index.score(bare, toy_tokenizer.tokens(profile(A2))) == pytest.approx(sim, abs=1e-6)
    # an attribute only the other side gives counts against the match
    assert index.score(bare, toy_tokenizer.tokens(profile(A2, sex="male"))) == pytest.approx(0.7 * sim / 0.75)


def test_ranked_score_is_symmetric_and_one_for_the_same_profile(tokenizer, index):
    a = tokenizer.tokens(profile(FEVER, HEADACHE, diagnosis="J45.909", age="18-29", sex="other"))
    b = tokenizer.tokens(profile(FEVER, COUGH, age="30-44"))
    assert index.score(a, a) == 1.0
    assert index.score(a, b) == index.score(b, a)
    assert 0 < index.score(a, b) < 1


def test_ranked_orders_best_first_above_the_threshold(tokenizer, index):
    index.put(10, tokenizer.tokens(profile(FEVER, HEADACHE, age="30-44", sex="female")))  # the same
    index.put(11, tokenizer.tokens(profile(FEVER, HEADACHE, age="45-59", sex="female")))  # adjacent band
    index.put(12, tokenizer.tokens(profile(FEVER, HEADACHE, age="75+", sex="male")))
    index.put(13, tokenizer.tokens(profile("HP:0001954", HEADACHE, age="30-44", sex="female")))  # fever's child
    index.put(14, tokenizer.tokens(profile(SEIZURE, age="30-44", sex="female")))
    index.put(15, tokenizer.tokens(profile(FEVER, HEADACHE, age="30-44", sex="female")))  # a tie with 10
    query = tokenizer.tokens(profile(FEVER, HEADACHE, age="30-44", sex="female"))
    found = index.ranked(query, 0.5, 10)
    assert [m.profile_id for m in found][:4] == [10, 15, 11, 13]
    assert found[0].score == found[1].score == 1.0
    assert all(m.score >= 0.5 for m in found) and 14 not in {m.profile_id for m in found}
    assert [m.score for m in found] == sorted((m.score for m in found), reverse=True)
    assert tokenizer.terms_for(found[3].shared) == [HEADACHE]  # exact-term level: fever's child is not fever
    assert found == index.score_all(query, 0.5, 10)
    assert [m.profile_id for m in index.ranked(query, 0.5, 2, exclude={10})] == [15, 11]
    assert [m.profile_id for m in index.ranked(query, 0.99, 10)] == [10, 15]


def test_remove_and_replace(tokenizer, index):
    fever = tokenizer.tokens(profile(FEVER, HEADACHE))
    index.put(1, fever)
    index.put(2, fever)
    assert len(index) == 2 and 1 in index
    assert index.remove(1) is True
    assert index.remove(1) is False
    assert 1 not in index and list(index) == [2]
    assert [m.profile_id for m in index.exact(fever, 10)] == [2]
    assert [m.profile_id for m in index.ranked(fever, 0.1, 10)] == [2]
    index.put(2, tokenizer.tokens(profile(SEIZURE)))  # replaced: its old tokens are gone
    assert index.exact(fever, 10) == []
    assert index.ranked(fever, 0.5, 10) == index.score_all(fever, 0.5, 10) == []
    assert [m.profile_id for m in index.exact(tokenizer.tokens(profile(SEIZURE)), 10)] == [2]
    assert index.remove(2) and len(index) == 0
    assert index.ranked(fever, 0.0, 10) == []


def test_invalid_profile_from_another_key(graph, tokenizer, index):
    foreign = Tokenizer(OTHER_KEY, graph).tokens(profile(FEVER))
    with pytest.raises(InvalidProfile, match="not made with this matching key"):
        index.put(1, foreign)
    with pytest.raises(InvalidProfile, match="not made with this matching key"):
        index.ranked(foreign, 0.5, 10)
    mine = tokenizer.tokens(profile(FEVER, age="30-44", sex="male"))
    theirs = Tokenizer(OTHER_KEY, graph).tokens(profile(FEVER, age="30-44", sex="male"))
    young = tokenizer.tokens(profile(FEVER, age="0-17"))
    for forged in (
        TokenProfile(mine.symptom_set, mine.terms, mine.closure, sex=theirs.sex),
        TokenProfile(mine.symptom_set, mine.terms, mine.closure, age_band=theirs.age_band, age_near=mine.age_near),
        TokenProfile(mine.symptom_set, mine.terms, mine.closure, age_band=mine.age_band, age_near=young.age_near),
    ):
        with pytest.raises(InvalidProfile, match="not made with this matching key"):
            index.put(1, forged)
    assert len(index) == 0


# --- the index against scoring everyone --------------------------------------------------------


def clustered_population(graph: HpoGraph, count: int, seed: int) -> list[SymptomProfile]:
    """Profiles drawn around 60 clusters (the terms below one mid-level term), so that near and
    exact matches exist, with repeats of whole profiles (exact ties)."""
    rng = random.Random(seed)
    below: dict[str, list[str]] = {}
    for term in sorted(graph):
        for ancestor in graph.ancestors(term):
            below.setdefault(ancestor, []).append(term)
    seeds = rng.sample(sorted(t for t, terms in below.items() if 15 <= len(terms) <= 400), 60)
    profiles: list[SymptomProfile] = []
    while len(profiles) < count:
        if profiles and rng.random() < 0.05:
            profiles.append(rng.choice(profiles))
            continue
        pool = below[rng.choice(seeds)] + rng.sample(sorted(graph), 3)
        terms = frozenset(rng.sample(pool, rng.randint(2, 8)))
        profiles.append(
            SymptomProfile(
                terms,
                rng.choice([None, "J45.909", "J45.0", "E11.9", "G40.909"]),
                rng.choice((None, *AGE_BANDS)),
                rng.choice((None, *SEXES)),
            )
        )
    return profiles


@pytest.fixture(scope="module")
def population(graph, tokenizer) -> tuple[MatchIndex, list[TokenProfile]]:
    stored = [tokenizer.tokens(p) for p in clustered_population(graph, 4000, seed=6)]
    index = MatchIndex(tokenizer)
    for i, tp in enumerate(stored):
        index.put(i, TokenProfile.from_json(tp.to_json()))  # as loaded from the database
    return index, stored


@pytest.mark.parametrize("threshold", [0.0, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95])
def test_ranked_equals_score_all_on_a_random_population(population, threshold):
    index, stored = population
    rng = random.Random(threshold)
    answered = 0
    for q in rng.sample(range(len(stored)), 60):
        for limit in (1, 7, 50):
            found = index.ranked(stored[q], threshold, limit, exclude={q})
            assert found == index.score_all(stored[q], threshold, limit, exclude={q})
            assert all(m.score >= threshold and m.profile_id != q for m in found)
            answered += bool(found)
    assert answered  # the population has matches at every threshold tried


def test_ranked_skips_most_profiles_at_a_useful_threshold(population):
    index, stored = population
    work = [index.work(stored[q], 0.6, 20) for q in range(0, 4000, 40)]
    looked, scored = sorted(w[0] for w in work), sorted(w[1] for w in work)
    assert looked[len(looked) // 2] < len(index) / 4
    assert scored[len(scored) // 2] < looked[len(looked) // 2]
    assert all(s <= w for w, s in work)
    assert index.work(stored[0], 0.0, 20) == (len(index), len(index))  # attributes alone can reach 0


def test_ranked_equals_score_all_for_queries_not_in_the_index_and_after_removals(graph, tokenizer, population):
    _, stored = population
    index = MatchIndex(tokenizer)
    for i, tp in enumerate(stored[:1500]):
        index.put(i, tp)
    for i in range(0, 1500, 3):
        index.remove(i)
    queries = [tokenizer.tokens(p) for p in clustered_population(graph, 40, seed=7)]
    for query in queries + stored[:30]:
        for threshold in (0.3, 0.5, 0.7):
            assert index.ranked(query, threshold, 10) == index.score_all(query, threshold, 10)
            assert all(m.profile_id % 3 for m in index.ranked(query, threshold, 10))


def test_exact_equals_a_scan_on_a_random_population(population):
    index, stored = population
    for q in range(0, 4000, 25):
        expected = [i for i, tp in enumerate(stored) if tp.symptom_set == stored[q].symptom_set and i != q]
        assert [m.profile_id for m in index.exact(stored[q], 1000, exclude={q})] == expected


def test_weights_must_favour_symptoms():
    assert WEIGHTS.symptoms + WEIGHTS.diagnosis + WEIGHTS.age + WEIGHTS.sex == pytest.approx(1.0)
    with pytest.raises(ValueError, match="weights must be >= 0"):
        Weights(symptoms=0.0)
