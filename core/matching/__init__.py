"""Symptom matching over keyed tokens: profiles, the HPO graph, tokenisation and the match index.

graph = HpoGraph.load()
tokenizer = Tokenizer(node_matching_key, graph)
index = MatchIndex(tokenizer)
index.put(profile_id, tokenizer.tokens(SymptomProfile(frozenset({"HP:0001945"}), age_band="30-44")))
index.ranked(tokenizer.tokens(query), threshold=0.5, limit=20, exclude={own_id})
"""

from core.matching.graph import HpoGraph
from core.matching.index import WEIGHTS, Match, MatchIndex, Weights
from core.matching.profile import AGE_BANDS, MAX_TERMS, SEXES, SymptomProfile, normal_diagnosis
from core.matching.tokens import Tokenizer, TokenProfile

__all__ = [
    "AGE_BANDS",
    "MAX_TERMS",
    "SEXES",
    "WEIGHTS",
    "HpoGraph",
    "Match",
    "MatchIndex",
    "SymptomProfile",
    "TokenProfile",
    "Tokenizer",
    "Weights",
    "normal_diagnosis",
]
