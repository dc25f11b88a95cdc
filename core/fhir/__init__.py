"""HL7 FHIR R4 views of MedLedger's records and access log (docs/fhir.md).

`export` turns opened records into one Bundle; `audit` turns the access log into AuditEvent
resources and CSV; `importer` turns a Bundle from another EHR into the fields of one new record,
or every problem found in it, per resource. Pure functions over plain values: no Flask, no
database, no network."""

from __future__ import annotations

# Code systems and identifier namespaces, one place for export and import alike.
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
HPO = "http://human-phenotype-ontology.org"  # as the Phenomics Exchange guide codes phenotypes
HPO_ALIASES = (HPO, "http://purl.obolibrary.org/obo/hp.owl", "https://hpo.jax.org")
LOINC = "http://loinc.org"
CATEGORY = "urn:medledger:record-category"
RECORD_ID = "urn:medledger:record"
USER_ID = "urn:medledger:user"
LEDGER_TX = "urn:medledger:ledger-transaction"
LEDGER_BLOCK = "urn:medledger:ledger-block"
PRESCRIPTION = "urn:medledger:prescription"  # extension: the prescription as written, for a lossless round trip

# LOINC codes of the Composition and its sections.
RECORD_TYPE = ("11503-0", "Medical records")
SECTION_DIAGNOSES = ("29548-5", "Diagnosis Narrative")
SECTION_PHENOTYPES = ("8716-3", "Physical findings")
SECTION_MEDICATIONS = ("10160-0", "History of Medication use Narrative")
SECTION_NOTES = ("48767-8", "Annotation comment")
SECTION_FILES = ("55107-7", "Addendum Document")
PRESENT = ("LA9633-4", "Present")
ABSENT = "LA9634-2"

MEDIA_TYPE = "application/fhir+json"
