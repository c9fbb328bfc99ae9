"""The README stays a user's page: short, with the test command CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_is_under_15_kb_and_gives_the_ci_test_command() -> None:
    readme = (ROOT / "README.md").read_bytes()
    assert len(readme) < 15_000, f"README.md is {len(readme):,} bytes: move detail to docs/"
    assert b"pytest -n auto" in readme
    assert b"pytest -n auto" in (ROOT / ".ci" / "run").read_bytes()


def test_product_docs_name_the_apis_not_their_source_documents() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        text = page.read_text()
        assert not re.search(r"\bseeds?\b", text, re.IGNORECASE), page.name
        assert not re.search(r"\bissue #\d+", text, re.IGNORECASE), page.name
