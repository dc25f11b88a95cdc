"""core/fhir/importer.py under fuzzing: whatever a Bundle holds, reading it either gives a
record's fields or BundleProblems naming where, never another exception (which would be a 500)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.clinical.codes import load_vocabulary
from core.fhir.importer import BundleProblems, Imported, read_bundle

SAMPLES = Path(__file__).resolve().parent.parent / "portal" / "fhir_samples"
CATEGORIES = ("general", "respiratory")
VOCABULARY = load_vocabulary()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for n, item in enumerate(value):
            found += paths(item, (*prefix, n))
    return found


def replaced(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    out = copy.deepcopy(document)
    target = out
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return out


SAMPLE_DOCUMENTS = [json.loads(p.read_text()) for p in sorted(SAMPLES.glob("*.json"))]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_change_to_a_good_bundle_is_read_or_refused_with_its_place(data: st.DataObject) -> None:
    document = data.draw(st.sampled_from(SAMPLE_DOCUMENTS))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths(document)))
        document = replaced(document, path, data.draw(json_values))
    try:
        result = read_bundle(document, VOCABULARY, CATEGORIES)
    except BundleProblems as exc:
        assert exc.problems and all(isinstance(m, str) and m for m in exc.problems.values())
    else:
        assert isinstance(result, Imported)
        assert result.fields["category"] in CATEGORIES


def test_the_samples_read_as_they_are() -> None:
    for document in SAMPLE_DOCUMENTS:
        assert read_bundle(document, VOCABULARY, CATEGORIES).fields["diagnoses"]
