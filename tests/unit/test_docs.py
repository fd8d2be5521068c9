"""Every AMI_AUTH_* variable the settings read is documented in docs/configuration.md and .env.example."""

from __future__ import annotations

import re
from pathlib import Path

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
