"""Clinical vocabularies: ICD-10-CM diagnoses and HPO phenotype terms."""

from core.clinical.codes import Diagnosis, Symptom, Vocabulary, load_vocabulary

__all__ = ["Diagnosis", "Symptom", "Vocabulary", "load_vocabulary"]
