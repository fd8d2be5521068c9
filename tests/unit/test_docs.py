"""Every AMI_AUTH_* variable the settings read is documented in docs/configuration.md and .env.example."""

from __future__ import annotations

import re
from pathlib import Path

from app.providers.registry import get_catalog

ROOT = Path(__file__).resolve().parents[2]


def _variables_read() -> set[str]:
    source = (ROOT / "app" / "settings.py").read_text()
    names = set(re.findall(r'PREFIX \+ "([A-Z0-9_]+)"', source))
    names |= set(re.findall(r'_(?:int|float|bool|list)\(env, "([A-Z0-9_]+)"', source))
    return {f"AMI_AUTH_{n}" for n in names}


def test_every_variable_is_documented() -> None:
    variables = _variables_read()
    assert len(variables) > 20
    docs = (ROOT / "docs" / "configuration.md").read_text()
    example = (ROOT / ".env.example").read_text()
    missing_docs = sorted(v for v in variables if f"`{v}`" not in docs)
    missing_example = sorted(v for v in variables if not re.search(rf"^#?{v}=", example, re.M))
    assert missing_docs == [], f"add to docs/configuration.md: {missing_docs}"
    assert missing_example == [], f"add to .env.example: {missing_example}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_security_md_is_the_rotation_sop_entry_point() -> None:
    """SECURITY.md (the seed's name for the key-rotation SOP) exists and every link lands on a heading."""
    page = (ROOT / "SECURITY.md").read_text()
    assert "Key-rotation SOP" in page
    links = re.findall(r"\]\(([^)#]+\.md)(?:#([^)]+))?\)", page)
    assert {target for target, _ in links} >= {"docs/security.md", "docs/connected-accounts.md"}
    for target, anchor in links:
        doc = ROOT / target
        assert doc.is_file(), target
        if anchor:
            anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", doc.read_text(), re.M)}
            assert anchor in anchors, f"{target}#{anchor} is not a heading"
    for command in ("ami-auth keys rotate", "ami-auth keys rewrap", "ami-auth jobs purge-secrets"):
        assert command in page


def test_every_env_fallback_of_the_catalog_is_documented() -> None:
    """Provider variables (HF_TOKEN) are read by the catalog, not the settings: listed all the same."""
    names = {
        spec.env_fallback
        for entry in get_catalog()
        for which in ("config", "account")
        for spec in entry.fields(which)
        if spec.env_fallback
    }
    assert "HF_TOKEN" in names
    docs = (ROOT / "docs" / "configuration.md").read_text()
    example = (ROOT / ".env.example").read_text()
    assert sorted(n for n in names if f"`{n}`" not in docs) == []
    assert sorted(n for n in names if not re.search(rf"^#?{n}=", example, re.M)) == []
