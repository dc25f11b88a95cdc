"""Proxy re-encryption grants (Umbral): a patient delegates reading to a doctor.

The patient makes key fragments from their Umbral key to the doctor's; a proxy
holding at least `threshold` of them turns a record's capsule into capsule
fragments that only the doctor's secret key opens. The proxy never sees a data
key or a record.
"""

from core.pre.grant import (
    EmergencyKey,
    Threshold,
    VerifiedFragment,
    check_capsule_fragment,
    make_key_fragments,
    open_reencrypted,
    reencrypt,
)

__all__ = [
    "EmergencyKey",
    "Threshold",
    "VerifiedFragment",
    "check_capsule_fragment",
    "make_key_fragments",
    "open_reencrypted",
    "reencrypt",
]
