"""Translation checks: extract the marked strings as `make messages` does, and a pseudo-locale to find the rest.

The pseudo-locale (``eo``, never shipped) translates every marked message to ``⟦message⟧``: a page rendered in it
shows, outside such brackets, only what nobody marked for translation (or data: names, emails, ids).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.frontend import CommandLineInterface
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from flask import Flask

ROOT = Path(__file__).resolve().parents[2]
PSEUDO_LOCALE = "eo"
OPEN, CLOSE = "⟦", "⟧"


def extract(pot: Path) -> Catalog:
    """Every marked string of the code and templates, as ``make messages`` extracts them (babel.cfg)."""
    keywords = ["-k", "lazy_gettext", "-k", "lazy_ngettext:1,2"]
    CommandLineInterface().run(  # type: ignore[no-untyped-call]
        ["pybabel", "-q", "extract", "-F", str(ROOT / "babel.cfg"), *keywords, "-o", str(pot), str(ROOT)]
    )
    with pot.open("rb") as f:
        return read_po(f)


def pseudo_translations(directory: Path) -> Path:
    """Compile the pseudo-locale's catalog under ``directory`` (a translations directory) and return it."""
    template = extract(directory / "messages.pot")
    catalog = Catalog(locale=PSEUDO_LOCALE)
    for message in template:
        if not message.id:
            continue
        if isinstance(message.id, tuple | list):
            string: str | tuple[str, ...] = tuple(OPEN + form + CLOSE for form in message.id)
        else:
            string = OPEN + message.id + CLOSE
        catalog.add(message.id, string, context=message.context)
    target = directory / PSEUDO_LOCALE / "LC_MESSAGES"
    target.mkdir(parents=True, exist_ok=True)
    with (target / "messages.mo").open("wb") as f:
        write_mo(f, catalog)
    return directory


def use_pseudo_locale(app: Flask, directory: Path) -> None:
    """Serve ``app`` the pseudo-locale too (ask for it with ``Accept-Language: eo``)."""
    app.extensions["babel"].translation_directories.append(str(directory))
    app.extensions.pop("ami_locales", None)


class _Text(HTMLParser):
    """The text a user reads or hears: text nodes (not script/style) and the attributes read aloud or shown."""

    SPOKEN = frozenset({"title", "placeholder", "aria-label", "alt"})

    # Inline markup inside a sentence (a translated message may hold <strong>, <a> or <code>) does not split it.
    INLINE = frozenset({"a", "strong", "em", "b", "i", "code", "span", "time", "abbr", "small", "kbd"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0
        self._open = False  # the last part is text that inline markup may continue

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in {"script", "style"}:
            self._skip += 1
        if tag not in self.INLINE:
            self._open = False
        for name, value in attrs:
            if value and (name in self.SPOKEN or (tag == "input" and name == "value" and ("type", "submit") in attrs)):
                self.parts.append(value)
                self._open = False

    def handle_endtag(self, tag: str) -> None:
        if tag in {"script", "style"} and self._skip:
            self._skip -= 1
        if tag not in self.INLINE:
            self._open = False

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._open and self.parts:
            self.parts[-1] += data
        else:
            self.parts.append(data)
        self._open = True


_MARKED = re.compile(f"{OPEN}[^{OPEN}{CLOSE}]*{CLOSE}")
_WORDS = re.compile(r"[^\W\d_]{2,}")


def unmarked_text(html: str, allowed: tuple[str, ...] = ()) -> list[str]:
    """The pieces of ``html``'s text that are words outside every ``⟦…⟧``, minus the ``allowed`` data."""
    parser = _Text()
    parser.feed(html)
    found = []
    for part in parser.parts:
        text = part
        while True:  # innermost first: a marked message may hold another as a placeholder's value
            stripped = _MARKED.sub(" ", text)
            if stripped == text:
                break
            text = stripped
        for value in allowed:
            text = text.replace(value, " ")
        text = " ".join(text.split())
        if _WORDS.search(text):
            found.append(text)
    return found
