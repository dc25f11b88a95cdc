"""A FHIR R4 Bundle from another EHR as the fields of one new MedLedger record (docs/fhir.md, Import).

The Bundle is first checked against the R4B models of `fhir.resources` (structure and types),
then read resource by resource: Conditions must carry an ICD-10-CM code and Observations an HPO
phenotype the vocabularies know; MedicationRequests become prescriptions, DocumentReferences with
embedded data attachments, and a Composition (if any) gives the title, category and notes.
Administrative resources (Patient, Practitioner, PractitionerRole, Organization, Encounter,
Provenance) are read for nothing: the importing doctor is the author. Anything else would be
dropped, so it is a problem too. Every problem is reported, under the resource it is in, and
none is stored: the caller gets either the whole record or `BundleProblems`."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from core import fhir
from core.clinical.codes import Vocabulary
from core.errors import CoreError, InvalidCode

ADMINISTRATIVE = {"Patient", "Practitioner", "PractitionerRole", "Organization", "Encounter", "Provenance"}
MAX_ENTRIES = 500
DEFAULT_CATEGORY = "general"


class BundleProblems(CoreError):
    """What stops a Bundle from becoming a record: `problems` maps each place ("entry.3
    (Condition/abc)", or "Bundle") to what is wrong there."""

    def __init__(self, problems: Mapping[str, str]) -> None:
        super().__init__(f"The FHIR Bundle cannot be imported: {len(problems)} problem(s).")
        self.problems = dict(problems)


@dataclass
class Imported:
    """The new record's fields (as `records.create_record` takes them) and its attachments
    (file name, declared content type, bytes)."""

    fields: dict[str, Any]
    files: list[tuple[str, str, bytes]] = field(default_factory=list)


def _place(n: int | None, resource: Mapping[str, Any] | None) -> str:
    if n is None:
        return "Bundle"
    if not isinstance(resource, Mapping):
        return f"entry.{n}"
    return f"entry.{n} ({resource.get('resourceType')}/{resource.get('id') or '-'})"


def _resource_types(entries: list[Any]) -> dict[str, str]:
    """Entries whose resource has no resource type the R4B models know (the models themselves
    fail on some of these with errors of their own, not validation errors)."""
    found = {}
    for n, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if resource is None:
            continue
        kind = resource.get("resourceType") if isinstance(resource, Mapping) else None
        try:
            valid = isinstance(kind, str) and kind.isalpha() and get_fhir_model_class(kind) is not None
        except ValueError:
            valid = False
        if not valid:
            found[_place(n, resource)] = "not a FHIR R4 resource (`resourceType` missing or unknown)"
    return found


def _structure(document: Mapping[str, Any]) -> dict[str, str]:
    """Structure and type errors from the R4B models, one message per resource (the first)."""
    try:
        Bundle.model_validate(document)
    except (KeyError, TypeError, AttributeError, RecursionError) as exc:  # the models' own failures
        return {"Bundle": f"The Bundle's structure could not be read ({type(exc).__name__})."}
    except ValidationError as exc:
        found: dict[str, str] = {}
        entries = document.get("entry") if isinstance(document.get("entry"), list) else []
        for error in exc.errors():
            loc = error["loc"]
            n = loc[1] if len(loc) > 1 and loc[0] == "entry" and isinstance(loc[1], int) else None
            resource = entries[n].get("resource") if n is not None and isinstance(entries[n], Mapping) else None
            where = ".".join(str(p) for p in (loc[3:] if n is not None and len(loc) > 3 else loc))
            found.setdefault(_place(n, resource), f"{error['msg']} at `{where}`")
        return found
    return {}


def _codings(concept: Any) -> list[Mapping[str, Any]]:
    if not isinstance(concept, Mapping):
        return []
    return [c for c in concept.get("coding") or [] if isinstance(c, Mapping)]


def _text_of(concept: Any) -> str:
    if not isinstance(concept, Mapping):
        return ""
    return str(concept.get("text") or next((c.get("display") for c in _codings(concept) if c.get("display")), ""))


def _code_in(concept: Any, systems: tuple[str, ...], what: str) -> str:
    """The code of `concept` in one of `systems`, or InvalidCode naming the systems it has."""
    codings = _codings(concept)
    for c in codings:
        if c.get("system") in systems and isinstance(c.get("code"), str):
            return str(c["code"])
    others = sorted({str(c.get("system")) for c in codings if c.get("system")})
    has = f" (it has {', '.join(others)})" if others else " (it has none)"
    raise InvalidCode(f"no {what} code{has}")


def _notes(div: str) -> str:
    """Narrative XHTML as plain text: tags dropped, entities decoded, line breaks kept."""
    text = re.sub(r"<br\s*/?>|</p>|</div>|</li>", "\n", div)
    return html.unescape(re.sub(r"<[^>]+>", "", text)).strip()


def _prescription(resource: Mapping[str, Any]) -> dict[str, str]:
    for ext in resource.get("extension") or []:
        if isinstance(ext, Mapping) and ext.get("url") == fhir.PRESCRIPTION:
            return {e["url"]: e.get("valueString", "") for e in ext.get("extension") or [] if isinstance(e, Mapping)}
    drug = _text_of(resource.get("medicationCodeableConcept")) or str(
        (resource.get("medicationReference") or {}).get("display") or ""
    )
    dosage = next(iter(resource.get("dosageInstruction") or []), {})
    item = {"drug": drug}
    dose = next(iter(dosage.get("doseAndRate") or []), {}).get("doseQuantity")
    if isinstance(dose, Mapping) and dose.get("value") is not None:
        item["dose"] = f"{dose['value']} {dose.get('unit') or dose.get('code') or ''}".strip()
    elif dosage.get("text"):
        item["dose"] = str(dosage["text"])
    timing = dosage.get("timing") or {}
    repeat = timing.get("repeat") or {}
    if _text_of(timing.get("code")):
        item["frequency"] = _text_of(timing.get("code"))
    elif repeat.get("frequency") and repeat.get("period"):
        item["frequency"] = f"{repeat['frequency']} per {repeat['period']} {repeat.get('periodUnit', '')}".strip()
    supply = (resource.get("dispenseRequest") or {}).get("expectedSupplyDuration") or repeat.get("boundsDuration")
    if isinstance(supply, Mapping) and supply.get("value") is not None:
        item["duration"] = f"{supply['value']} {supply.get('unit') or supply.get('code') or ''}".strip()
    return item


def read_bundle(document: Any, vocabulary: Vocabulary, categories: tuple[str, ...]) -> Imported:
    """The record a Bundle holds, or BundleProblems with every problem in it."""
    if not isinstance(document, Mapping) or document.get("resourceType") != "Bundle":
        raise BundleProblems({"Bundle": 'The body is not a FHIR Bundle (`resourceType` must be "Bundle").'})
    entries = document.get("entry")
    if not isinstance(entries, list) or not entries:
        raise BundleProblems({"Bundle": "The Bundle has no entries."})
    if len(entries) > MAX_ENTRIES:
        raise BundleProblems({"Bundle": f"The Bundle has {len(entries)} entries; at most {MAX_ENTRIES} are read."})
    problems = _resource_types(entries) or _structure(document)
    if problems:
        raise BundleProblems(problems)
    fields: dict[str, Any] = {"diagnoses": [], "symptoms": [], "prescriptions": [], "notes": ""}
    imported = Imported(fields)
    compositions = []
    patients = 0
    for n, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(resource, Mapping):
            continue  # a reference-only entry (the models allow it); nothing to read
        kind, place = resource.get("resourceType"), _place(n, resource)
        try:
            if kind == "Condition":
                fields["diagnoses"].append(vocabulary.diagnosis(_code_in(resource.get("code"), (fhir.ICD10CM,),
                                                                        "ICD-10-CM")).code)  # fmt: skip
            elif kind == "Observation":
                answer = _codings(resource.get("valueCodeableConcept"))
                if any(c.get("code") == fhir.ABSENT for c in answer):
                    raise InvalidCode("an absent (excluded) phenotype cannot be recorded")
                fields["symptoms"].append(vocabulary.symptom(_code_in(resource.get("code"), fhir.HPO_ALIASES,
                                                                     "HPO")).id)  # fmt: skip
            elif kind == "MedicationRequest":
                item = _prescription(resource)
                if not item.get("drug"):
                    raise InvalidCode("no medication named (`medicationCodeableConcept` text or display)")
                fields["prescriptions"].append(item)
            elif kind == "DocumentReference":
                for content in resource.get("content") or []:
                    attachment = content.get("attachment") or {}
                    if not attachment.get("data"):
                        raise InvalidCode("an attachment must be embedded (`data`); links are not followed")
                    name = str(attachment.get("title") or resource.get("description") or f"attachment-{n}")
                    data = base64.b64decode(attachment["data"])
                    imported.files.append((name, str(attachment.get("contentType") or ""), data))
            elif kind == "Composition":
                compositions.append(resource)
            elif kind == "Patient":
                patients += 1
            elif kind not in ADMINISTRATIVE:
                raise InvalidCode(f"a MedLedger record does not hold {kind} resources; remove it to import the rest")
        except InvalidCode as exc:
            problems[place] = str(exc)
        except (ValueError, TypeError, AttributeError):
            problems[place] = "this resource could not be read"
    if patients > 1:
        problems["Bundle"] = f"The Bundle is about {patients} patients; import one patient's record at a time."
    if len(compositions) > 1:
        problems["Bundle"] = f"The Bundle holds {len(compositions)} records (Compositions); import one at a time."
    if problems:
        raise BundleProblems(problems)
    composition = compositions[0] if compositions else {}
    category = next(
        (str(c.get("code")) for cat in composition.get("category") or [] for c in _codings(cat)
         if c.get("system") == fhir.CATEGORY and c.get("code") in categories),
        DEFAULT_CATEGORY,
    )  # fmt: skip
    notes = [
        _notes(str((s.get("text") or {}).get("div", "")))
        for s in composition.get("section") or []
        if (s.get("text") or {}).get("div") and not s.get("entry")
    ]
    fields.update(
        title=str(composition.get("title") or "").strip() or "Imported record",
        category=category,
        notes="\n\n".join(t for t in notes if t),
    )
    return imported
