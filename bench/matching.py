"""MedLedger symptom matching benchmark, in process (core.matching only, no server).

Builds a synthetic population of token profiles (100,000 by default), puts it in a MatchIndex,
then asks the same queries of the index (`exact`, `ranked`) and of a scan of every profile
(`score_all`, and a scan comparing symptom-set tokens for exact mode), taking turns query by query
so that both share the machine's load; every answer of the index must equal the scan's.

The population is drawn so that matches exist, as among real patients: each profile is 2-8
phenotype terms of one OMIM disease from hpo3's annotations (5,000 diseases; popularity falls off
as 1 / (rank + 20), so the commonest covers about 1 % of profiles), a quarter of the terms reported
one level less specific (a parent term), three in ten profiles with an everyday complaint added
(fatigue, headache, ...) and one in twenty only 2-3 everyday complaints; 60 % give a diagnosis
(per disease, sometimes another code of the same category), 85 % an age band, 85 % a sex. Queries
are profiles of the population, each leaving itself out.

    cd /work/main && .venv/bin/python bench/matching.py [--profiles N] [--queries Q]
        [--threshold T] [--more-thresholds 0.4,0.6,0.7] [--more-queries Q2] [--limit L] [--seed S] [--json]

Progress goes to stderr; the results table (or JSON with --json) to stdout. Exit code 1 when an
answer of the index differs from the scan's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # so that `core` and `bench` import

from bench.harness import Metric, Section, log, machine, percentile, print_table
from core.clinical.codes import load_hpo_ontology
from core.matching import AGE_BANDS, SEXES, HpoGraph, Match, MatchIndex, SymptomProfile, Tokenizer, TokenProfile

KEY = bytes(range(32))  # a fixed matching key: the figures do not depend on it
DISEASES = 5_000
POPULARITY_OFFSET = 20
SIZES = {2: 15, 3: 20, 4: 20, 5: 15, 6: 12, 7: 10, 8: 8}  # terms per profile -> weight
LESS_SPECIFIC = 0.25
ADD_EVERYDAY = 0.30
ONLY_EVERYDAY = 0.05
EVERYDAY = (
    "HP:0012378",  # fatigue
    "HP:0001945",  # fever
    "HP:0002315",  # headache
    "HP:0002018",  # nausea
    "HP:0002027",  # abdominal pain
    "HP:0002094",  # dyspnea
    "HP:0012735",  # cough
    "HP:0002829",  # arthralgia
    "HP:0003326",  # myalgia
    "HP:0100749",  # chest pain
    "HP:0002321",  # vertigo
    "HP:0000739",  # anxiety
    "HP:0000716",  # depression
    "HP:0100785",  # insomnia
    "HP:0002014",  # diarrhea
    "HP:0000989",  # pruritus
)
WITH_DIAGNOSIS, OTHER_CODE = 0.60, 0.20
WITH_AGE, WITH_SEX = 0.85, 0.85
LETTERS = "ABCDEGHIJKLMNOQ"


# --- the population ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Disease:
    terms: tuple[str, ...]
    code: str


def diseases(graph: HpoGraph, rng: random.Random) -> list[Disease]:
    """DISEASES OMIM diseases with at least 3 phenotype terms, in popularity order, each with a
    made-up ICD-10-CM code (matching checks the form of a code only)."""
    ontology = load_hpo_ontology()
    found = []
    for disease in ontology.omim_diseases:
        terms = tuple(sorted(t for t in (f"HP:{i:07d}" for i in disease.hpo) if t in graph))
        if len(terms) >= 3:
            found.append(terms)
    found.sort()
    rng.shuffle(found)
    return [
        Disease(terms, f"{rng.choice(LETTERS)}{rng.randrange(100):02d}.{rng.randrange(10)}")
        for terms in found[:DISEASES]
    ]


def parents_in(graph: HpoGraph) -> dict[str, list[str]]:
    """Each term's parents within the graph (not its root)."""
    ontology = load_hpo_ontology()
    return {
        term: sorted(p.id for p in ontology.get_hpo_object(term).parents if p.id in graph) for term in sorted(graph)
    }


def population(graph: HpoGraph, count: int, seed: int) -> list[SymptomProfile]:
    rng = random.Random(seed)
    pool = diseases(graph, rng)
    parents = parents_in(graph)
    weights = [1 / (rank + POPULARITY_OFFSET) for rank in range(len(pool))]
    sizes, size_weights = list(SIZES), list(SIZES.values())
    everyday = [t for t in EVERYDAY if t in graph]
    profiles = []
    for disease in rng.choices(pool, weights, k=count):
        if rng.random() < ONLY_EVERYDAY:
            terms = set(rng.sample(everyday, rng.randint(2, 3)))
            code = f"R{rng.randrange(70):02d}.{rng.randrange(10)}"
        else:
            size = rng.choices(sizes, size_weights)[0]
            terms = set()
            for term in rng.sample(disease.terms, min(size, len(disease.terms))):
                up = parents[term]
                terms.add(rng.choice(up) if up and rng.random() < LESS_SPECIFIC else term)
            if rng.random() < ADD_EVERYDAY:
                terms.add(rng.choice(everyday))
            code = disease.code if rng.random() >= OTHER_CODE else f"{disease.code[:3]}.{rng.randrange(10)}"
        profiles.append(
            SymptomProfile(
                frozenset(terms),
                code if rng.random() < WITH_DIAGNOSIS else None,
                rng.choice(AGE_BANDS) if rng.random() < WITH_AGE else None,
                rng.choice(SEXES) if rng.random() < WITH_SEX else None,
            )
        )
    return profiles


# --- measuring --------------------------------------------------------------------------------


def rss_mib() -> float:
    """The process's resident memory now, in MiB (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def ms_metrics(key: str, label: str, seconds: Sequence[float]) -> list[Metric]:
    ms = [s * 1000 for s in seconds]
    return [
        Metric(f"{key}_p50_ms", f"{label} p50", percentile(ms, 50), "ms"),
        Metric(f"{key}_p95_ms", f"{label} p95", percentile(ms, 95), "ms"),
        Metric(f"{key}_max_ms", f"{label} max", max(ms), "ms"),
    ]


def scan_exact(stored: Sequence[TokenProfile], tp: TokenProfile, limit: int, own: int) -> list[int]:
    """Exact mode by looking at every stored profile."""
    return [i for i, other in enumerate(stored) if i != own and other.symptom_set == tp.symptom_set][:limit]


@dataclass
class Disagreement:
    count: int = 0


def exact_section(index: MatchIndex, stored: Sequence[TokenProfile], queries: Sequence[int], limit: int,
                  bad: Disagreement) -> Section:  # fmt: skip
    indexed, scanned, found = [], [], []
    for q in queries:
        answer, seconds = timed(lambda q=q: index.exact(stored[q], limit, exclude={q}))
        indexed.append(seconds)
        reference, seconds = timed(lambda q=q: scan_exact(stored, stored[q], limit, q))
        scanned.append(seconds)
        if [m.profile_id for m in answer] != reference:
            bad.count += 1
        found.append(len(answer))
    return Section(
        "exact",
        f"Exact mode (same symptom set), {len(queries)} queries, limit {limit}",
        [
            *ms_metrics("exact_index", "index.exact", indexed),
            *ms_metrics("exact_scan", "scan of every profile", scanned),
            Metric("exact_speedup", "scan p50 / index p50", percentile(scanned, 50) / percentile(indexed, 50), "x"),
            Metric("exact_with_match", "queries with at least one match", sum(1 for f in found if f)),
            Metric("exact_found_mean", "matches per query, mean (capped at the limit)", sum(found) / len(found)),
        ],
    )


def ranked_section(index: MatchIndex, stored: Sequence[TokenProfile], queries: Sequence[int], threshold: float,
                   limit: int, bad: Disagreement) -> Section:  # fmt: skip
    indexed, scanned, found, looked, scored, best = [], [], [], [], [], []
    for q in queries:
        answer, seconds = timed(lambda q=q: index.ranked(stored[q], threshold, limit, exclude={q}))
        indexed.append(seconds)
        reference, seconds = timed(lambda q=q: index.score_all(stored[q], threshold, limit, exclude={q}))
        scanned.append(seconds)
        if answer != reference:
            bad.count += 1
            log(f"ranked != score_all for query {q} at {threshold}: {summary(answer)} vs {summary(reference)}")
        found.append(len(answer))
        best.extend(m.score for m in answer[:1])
        looked_at, scored_in_full = index.work(stored[q], threshold, limit)
        looked.append(looked_at)
        scored.append(scored_in_full)
    key = f"ranked_{round(threshold * 100)}"
    speedup = percentile(scanned, 50) / percentile(indexed, 50)
    full_scans = sum(s == len(index) for s in looked)
    best_p50 = percentile(best, 50) if len(best) > 1 else 0.0
    return Section(
        key,
        f"Ranked mode, threshold {threshold}, {len(queries)} queries, limit {limit}",
        [
            *ms_metrics(f"{key}_index", "index.ranked", indexed),
            *ms_metrics(f"{key}_scan", "score_all (scores every profile)", scanned),
            Metric(f"{key}_speedup", "score_all p50 / ranked p50", speedup, "x"),
            Metric(f"{key}_looked_p50", "profiles ranked looked at (attributes), p50", percentile(looked, 50)),
            Metric(f"{key}_looked_p95", "profiles ranked looked at (attributes), p95", percentile(looked, 95)),
            Metric(f"{key}_scored_p50", "  of which scored in full, p50", percentile(scored, 50)),
            Metric(f"{key}_scored_p95", "  of which scored in full, p95", percentile(scored, 95)),
            Metric(f"{key}_full_scans", "queries ranked answered by scoring all", full_scans),
            Metric(f"{key}_with_match", "queries with at least one match", sum(1 for f in found if f)),
            Metric(f"{key}_found_mean", "matches per query, mean (capped at the limit)", sum(found) / len(found)),
            Metric(f"{key}_best_p50", "best score, p50 (queries with a match)", best_p50),
        ],
    )


def summary(matches: Sequence[Match]) -> str:
    return str([(m.profile_id, round(m.score, 6)) for m in matches[:5]])


# --- the run ----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200, help="queries at --threshold and in exact mode")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--more-thresholds", default="0.4,0.6,0.7", help="comma-separated; '' for none")
    parser.add_argument("--more-queries", type=int, default=50, help="queries at each of --more-thresholds")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    return parser.parse_args()


def build_index(args: argparse.Namespace) -> tuple[MatchIndex, list[TokenProfile], Section]:
    """Graph, tokenizer, population, tokens, and the index built from the tokens' stored JSON."""
    log("loading the HPO graph")
    graph, graph_s = timed(HpoGraph.load)
    tokenizer, tokenizer_s = timed(lambda: Tokenizer(KEY, graph))
    log(f"drawing {args.profiles:,} profiles")
    profiles, population_s = timed(lambda: population(graph, args.profiles, args.seed))
    log("tokenising")
    stored, tokenise_s = timed(lambda: [tokenizer.tokens(p) for p in profiles])
    rows, to_json_s = timed(lambda: [tp.to_json() for tp in stored])
    json_bytes = sum(len(json.dumps(row, separators=(",", ":"))) for row in rows)
    log("building the index from the stored JSON")
    before = rss_mib()
    index = MatchIndex(tokenizer)

    def build() -> None:
        for i, row in enumerate(rows):
            index.put(i, TokenProfile.from_json(row))

    _, build_s = timed(build)
    index_mib = rss_mib() - before
    n = args.profiles
    closure_mean = sum(len(tp.closure) for tp in stored) / n
    section = Section(
        "setup",
        f"Set-up, {n:,} profiles",
        [
            Metric("graph_load_s", "HpoGraph.load() (ontology + closures + IC)", graph_s, "s"),
            Metric("tokenizer_s", "Tokenizer(key, graph) (a token per HPO term)", tokenizer_s, "s"),
            Metric("population_s", "drawing the synthetic population (not MedLedger)", population_s, "s"),
            Metric("tokenise_us", "tokenizer.tokens(profile), mean", tokenise_s / n * 1e6, "us"),
            Metric("terms", "terms per profile, mean", sum(len(tp.terms) for tp in stored) / n),
            Metric("closure_tokens", "symptom tokens per profile (terms + ancestors), mean", closure_mean),
            Metric("stored_bytes", "stored JSON per profile, mean", json_bytes / n, "B"),
            Metric("to_json_us", "TokenProfile.to_json(), mean", to_json_s / n * 1e6, "us"),
            Metric("build_s", "index build: from_json + put, all profiles", build_s, "s"),
            Metric("build_per_s", "  profiles per second", n / build_s, "/s"),
            Metric("index_mib", "  resident memory it added", index_mib, "MiB"),
        ],
    )
    return index, stored, section


def main() -> int:
    args = parse_args()
    more = [float(t) for t in args.more_thresholds.split(",") if t.strip()]
    params = {"profiles": args.profiles, "limit": args.limit, "seed": args.seed, **machine()}
    index, stored, setup = build_index(args)
    n = args.profiles
    rng = random.Random(args.seed + 1)
    bad = Disagreement()
    log(f"exact mode: {args.queries} queries")
    sections = [setup, exact_section(index, stored, rng.sample(range(n), args.queries), args.limit, bad)]
    for threshold, count in [(args.threshold, args.queries), *((t, args.more_queries) for t in more)]:
        log(f"ranked mode at {threshold}: {count} queries, each also by score_all")
        sections.append(ranked_section(index, stored, rng.sample(range(n), count), threshold, args.limit, bad))
    sections.append(
        Section("agreement", "Agreement", [Metric("disagreements", "answers differing from the scan", bad.count)])
    )
    if args.json:
        figures = {s.key: {m.key: m.value for m in s.metrics} for s in sections}
        print(json.dumps({"params": params, **figures}, indent=2))
    else:
        print_table(f"MedLedger matching benchmark ({', '.join(f'{k} {v}' for k, v in params.items())})", sections)
    if bad.count:
        log(f"{bad.count} answers of the index differ from the scan's")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
