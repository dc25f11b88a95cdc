"""Clinical vocabularies: ICD-10-CM diagnoses and HPO phenotype terms."""

from core.clinical.codes import Diagnosis, Symptom, SymptomMatch, Vocabulary, load_lay_terms, load_vocabulary

__all__ = ["Diagnosis", "Symptom", "SymptomMatch", "Vocabulary", "load_lay_terms", "load_vocabulary"]
