"""Code lookup for the record form: the portal's own JSON for the search-as-you-type pickers.

The portal never calls /api (the API reads bearer tokens, never the session cookie), so the
record form's script asks these session-authenticated routes instead. They answer doctors only,
and hold nothing private: both vocabularies are public.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from flask import Response, jsonify, request

from core.clinical import Vocabulary
from core.errors import InvalidCode
from portal import runtime
from portal.auth import role_required
from portal.doctor import bp
from portal.services.errors import ServiceError
from portal.services.records import UnknownCodes

MAX_QUERY = 100  # characters, as the API's search routes allow
LIMIT = 12  # what fits in the list under the field


def _query() -> tuple[str | None, tuple[Response, int] | None]:
    """The search text, or a JSON 422 when it is too long or given twice."""
    values = request.args.getlist("q")
    if len(values) > 1:
        return None, _refused("Give the search once.")
    text = values[0] if values else ""
    if len(text) > MAX_QUERY:
        return None, _refused(f"Search for at most {MAX_QUERY} characters.")
    return text, None


def _refused(message: str) -> tuple[Response, int]:
    return jsonify({"error": {"code": "validation_failed", "message": message}}), 422


@bp.get("/codes/diagnoses")
@role_required("doctor")
def diagnosis_codes() -> Response | tuple[Response, int]:
    """ICD-10-CM diagnoses for what was typed: a code, its start, or words of the description."""
    text, refused = _query()
    if refused:
        return refused
    found = runtime.vocabulary().search_diagnoses(text or "", LIMIT)
    return jsonify({"diagnoses": [{"code": d.code, "description": d.description} for d in found]})


@bp.get("/codes/symptoms")
@role_required("doctor")
def symptom_codes() -> Response | tuple[Response, int]:
    """HPO symptoms for what was typed: words of the name or of an everyday phrase, or an HPO id."""
    text, refused = _query()
    if refused:
        return refused
    found = runtime.vocabulary().search_symptoms(text or "", LIMIT)
    return jsonify({"symptoms": [{"id": s.id, "name": s.name, "matched": s.matched} for s in found]})


# -- the record form after a refusal ------------------------------------------------------------

KINDS = {"diagnoses": "an ICD-10-CM diagnosis code", "symptoms": "an HPO symptom"}
SOME_UNKNOWN = "Some codes are not known: each one is named under its field. Pick codes from the search list."


def typed_codes(form: Mapping[str, str], kind: str) -> list[str]:
    """The codes typed or picked in a field of the record form, as the record view reads them."""
    return [c.strip() for c in form.get(kind, "").split(",") if c.strip()]


def picked(form: Mapping[str, str], vocabulary: Vocabulary) -> dict[str, list[dict[str, str | None]]]:
    """Each field's codes as sent, with the description of those the vocabulary knows (None for
    the others), so that the form shows them again as chips."""
    lookup: dict[str, Callable[[str], object]] = {
        "diagnoses": lambda c: vocabulary.diagnosis(c).description,
        "symptoms": lambda c: vocabulary.symptom(c).name,
    }
    shown: dict[str, list[dict[str, str | None]]] = {}
    for kind, describe in lookup.items():
        shown[kind] = []
        for code in typed_codes(form, kind):
            try:
                label = describe(code)
            except InvalidCode:
                label = None
            shown[kind].append({"code": code, "label": label})
    return shown


def problems(exc: ServiceError, form: Mapping[str, str]) -> dict[str, list[str]]:
    """Every unknown code of a refused record, as sentences under the field it was typed in."""
    if not isinstance(exc, UnknownCodes):
        return {}
    found: dict[str, list[str]] = {}
    for name in exc.fields:
        kind, _, n = name.partition(".")
        codes = typed_codes(form, kind)
        code = codes[int(n)] if n.isdigit() and int(n) < len(codes) else "A code"
        found.setdefault(kind, []).append(f"{code} is not {KINDS.get(kind, 'a known code')} this hospital knows.")
    return found
