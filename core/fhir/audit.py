"""The access log as FHIR AuditEvent resources and as CSV (docs/fhir.md, The access log).

Both are built from the same `LogEntry` values, so they always say the same thing as the log
the app shows."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from core import fhir
from core.fhir.export import Resource, bundle, coding, derived_id, instant

DCM = "http://dicom.nema.org/resources/ontology/DCM"
PURPOSE = {"grant": "TREAT", "author": "TREAT", "emergency": "ETREAT"}  # v3-ActReason


@dataclass(frozen=True)
class LogEntry:
    """One line of a patient's access log: a read of `record` (part "record" or "attachment N")
    by `reader`, or with no record an event on the account (`event` says what)."""

    id: str
    at: datetime
    reader_id: str
    reader_name: str
    reader_hospital: str | None
    mode: str
    event: str | None
    record_id: str | None
    part: str
    grant_id: str | None
    tx_hash: str


def audit_event(entry: LogEntry, patient_id: str) -> Resource:
    detail = [{"type": "ledger-transaction", "valueString": entry.tx_hash}]
    if entry.grant_id:
        detail.append({"type": "grant", "valueString": entry.grant_id})
    patient = {
        "what": {"identifier": {"system": fhir.USER_ID, "value": patient_id}},
        "type": coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "1", "Person"),
        "role": coding("http://terminology.hl7.org/CodeSystem/object-role", "1", "Patient"),
    }
    agent = {
        "type": {"coding": [coding("http://terminology.hl7.org/CodeSystem/extra-security-role-type", "humanuser")]},
        "who": {"identifier": {"system": fhir.USER_ID, "value": entry.reader_id}, "display": entry.reader_name},
        "requestor": True,
    }
    event: Resource = {
        "resourceType": "AuditEvent",
        "id": entry.id,
        "recorded": instant(entry.at),
        "outcome": "0",
        "agent": [agent],
        "source": {"observer": {"display": entry.reader_hospital or "MedLedger"}},
    }
    if entry.record_id is None:
        event |= {
            "type": coding(DCM, "110114", "User Authentication"),
            "action": "E",
            "outcomeDesc": entry.event or entry.mode,
            "entity": [{**patient, "detail": detail}],
        }
        return event
    purpose = PURPOSE.get(entry.mode, "TREAT")
    agent["purposeOfUse"] = [{"coding": [coding("http://terminology.hl7.org/CodeSystem/v3-ActReason", purpose)]}]
    record = {
        "what": {"identifier": {"system": fhir.RECORD_ID, "value": entry.record_id}},
        "type": coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "2", "System Object"),
        "role": coding("http://terminology.hl7.org/CodeSystem/object-role", "4", "Domain Resource"),
        "description": entry.part,
        "detail": [{"type": "access-mode", "valueString": entry.mode}, *detail],
    }
    return event | {
        "type": coding(DCM, "110110", "Patient Record"),
        "subtype": [coding("http://hl7.org/fhir/restful-interaction", "read", "read")],
        "action": "R",
        "entity": [record, patient],
    }


def audit_bundle(entries: Sequence[LogEntry], patient_id: str, *, now: datetime) -> Resource:
    return bundle([audit_event(e, patient_id) for e in entries], now=now,
                  bundle_id=derived_id("audit", patient_id, instant(now)))  # fmt: skip


CSV_COLUMNS = ("at", "reader", "reader_id", "reader_hospital", "mode", "event", "record_id", "part", "grant_id",
               "tx_hash")  # fmt: skip


def _cell(value: str) -> str:
    """A cell a spreadsheet shows as text: a leading = + - @ (or tab, CR) would make it a formula,
    and reader names are typed by people."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def audit_csv(entries: Sequence[LogEntry]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for e in entries:
        row = (instant(e.at), e.reader_name, e.reader_id, e.reader_hospital or "", e.mode, e.event or "",
               e.record_id or "", e.part, e.grant_id or "", e.tx_hash)  # fmt: skip
        writer.writerow([_cell(v) for v in row])
    return out.getvalue()
