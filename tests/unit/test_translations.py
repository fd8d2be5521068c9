"""Every shipped locale is complete: a message marked for translation that a catalog lacks fails here.

The shipped locales are the catalogs under app/translations; `make messages` brings new strings into them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

from app.i18n import TRANSLATIONS
from tests.support.i18n import extract

SHIPPED = sorted(p.parent.parent.name for p in TRANSLATIONS.glob("*/LC_MESSAGES/messages.po"))


def test_german_and_at_least_one_more_locale_are_shipped() -> None:
    assert "de" in SHIPPED
    assert len(SHIPPED) >= 2


@pytest.mark.parametrize("locale", SHIPPED)
def test_a_shipped_locale_has_every_message(locale: str, tmp_path: Path) -> None:
    template = extract(tmp_path / "messages.pot")
    with (TRANSLATIONS / locale / "LC_MESSAGES" / "messages.po").open("rb") as f:
        catalog = read_po(f)
    missing = []
    for message in template:
        if not message.id:
            continue
        have = catalog.get(message.id, context=message.context)
        strings = have.string if have is not None else None
        forms = strings if isinstance(strings, tuple | list) else (strings,)
        if have is None or have.fuzzy or not all(forms):
            missing.append(message.id if isinstance(message.id, str) else message.id[0])
    assert missing == [], f"{locale}: {len(missing)} messages lack a translation (make messages, then translate)"


@pytest.mark.parametrize("locale", SHIPPED)
def test_a_shipped_locale_is_compiled_from_its_catalog(locale: str) -> None:
    folder = TRANSLATIONS / locale / "LC_MESSAGES"
    with (folder / "messages.po").open("rb") as f:
        po = {_key(m.id): _key(m.string) for m in read_po(f) if m.id and m.string and not m.fuzzy}
    with (folder / "messages.mo").open("rb") as f:
        mo = {_key(m.id): _key(m.string) for m in read_mo(f) if m.id}
    assert mo == po, f"{locale}: messages.mo is not compiled from messages.po (make messages)"


def _key(value: str | tuple[str, ...] | list[str] | None) -> str | tuple[str, ...] | None:
    """A plural message's id and forms come as a list from a .po and a tuple from a .mo: compare them alike."""
    return tuple(value) if isinstance(value, tuple | list) else value
