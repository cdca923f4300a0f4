"""The code cites only documents inside the repository: every "docs/algorithms.md section N"
in a module names a section that exists, and no module cites the old out-of-tree notes."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "smoothguard"


def test_modules_cite_existing_sections_of_the_repository_notes():
    notes = (ROOT / "docs" / "algorithms.md").read_text()
    sections = {int(m) for m in re.findall(r"^## (\d+)\.", notes, re.M)}
    cited = set()
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        assert "ALGORITHMS.md" not in text, f"{path} cites a document outside the repository"
        for m in re.finditer(r"docs/algorithms\.md sections? ([\d ,and]+)", text):
            cited |= {int(n) for n in re.findall(r"\d+", m.group(1))}
    assert cited, "no module cites the notes (the check would be vacuous)"
    assert cited <= sections, f"cited sections {sorted(cited - sections)} do not exist"
