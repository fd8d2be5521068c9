"""docs/api.md keeps up with the code: its error table lists every code the OpenAPI document lists, and its
scope table — one unbroken Markdown table, so it renders — has a row for every scope."""

from __future__ import annotations

import re
from pathlib import Path

from app.api.tokens import SCOPES
from app.errors import TAXONOMY

DOC = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()


def _table(header: str) -> list[str]:
    """The rows of the Markdown table starting with ``header``, up to the first line that is not a row."""
    lines = DOC[DOC.index(header) :].splitlines()
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_every_error_code_of_the_taxonomy_is_in_the_error_table() -> None:
    rows = _table("| status | code | when |")
    documented = {match.group(1) for row in rows if (match := re.match(r"\| \d{3} \| `([a-z_]+)` \|", row))}
    assert documented == set(TAXONOMY), f"missing: {sorted(set(TAXONOMY) - documented)}"
    for code, kind in TAXONOMY.items():
        listed = any(row.startswith(f"| {kind.status} | `{code}` |") for row in rows)
        assert listed, f"{code} at its status {kind.status}"


def test_the_scope_table_renders_with_every_scope() -> None:
    rows = _table("| scope | allows |")
    scopes = [match.group(1) for row in rows if (match := re.match(r"\| `([a-z]+:[a-z]+)` \|", row))]
    assert scopes == list(SCOPES), "one row per scope, in the console's order, in one unbroken table"
    assert len(rows) == len(SCOPES)
