"""A patient's symptom profile in clear: what the PWA sends and the node holds only in memory."""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.clinical.codes import HPO_RE, ICD_RE
from core.errors import InvalidProfile

AGE_BANDS = ("0-17", "18-29", "30-44", "45-59", "60-74", "75+")
SEXES = ("female", "male", "other")
MAX_TERMS = 50
_DOT = re.compile(r"\.")


def normal_diagnosis(code: str) -> str:
    """An ICD-10-CM code in the form tokens are made from: upper case, no dot ('j45.909' -> 'J45909').

    Checks the form only; whether the code exists is `core.clinical.Vocabulary.diagnosis`'s job.
    Raises InvalidProfile."""
    normal = code.strip().upper() if isinstance(code, str) else ""
    if not ICD_RE.match(normal):
        raise InvalidProfile(f"not an ICD-10-CM code: {str(code)[:12]!r}")
    return _DOT.sub("", normal)


@dataclass(frozen=True)
class SymptomProfile:
    """Symptoms as HPO term ids plus the optional attributes ranked matching weighs.

    Construction checks the form of every field and raises InvalidProfile; whether each term is a
    known phenotype is checked when the profile is tokenised (InvalidCode).
    """

    terms: frozenset[str]
    diagnosis: str | None = None
    age_band: str | None = None
    sex: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.terms, frozenset):
            raise InvalidProfile("terms must be a frozenset of HPO term ids")
        if not self.terms:
            raise InvalidProfile("a profile needs at least one symptom")
        if len(self.terms) > MAX_TERMS:
            raise InvalidProfile(f"a profile holds at most {MAX_TERMS} symptoms, not {len(self.terms)}")
        for term in self.terms:
            if not isinstance(term, str) or not HPO_RE.match(term):
                raise InvalidProfile(f"not an HPO term id: {str(term)[:12]!r}")
        if self.diagnosis is not None:
            normal_diagnosis(self.diagnosis)
        if self.age_band is not None and self.age_band not in AGE_BANDS:
            raise InvalidProfile(f"age band must be one of {', '.join(AGE_BANDS)}")
        if self.sex is not None and self.sex not in SEXES:
            raise InvalidProfile(f"sex must be one of {', '.join(SEXES)}")

    def __repr__(self) -> str:
        # Symptoms are health data: keep them out of logs and tracebacks.
        return f"SymptomProfile(<{len(self.terms)} terms>)"
