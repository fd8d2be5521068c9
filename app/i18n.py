"""Languages: Flask-Babel's gettext for every page, mail and message, and the locale each request gets.

The catalogs live in ``app/translations/<locale>/LC_MESSAGES/messages.po`` (compiled to ``.mo`` beside them by
``make messages``); English is the source language and needs none. A request gets the signed-in user's chosen
language when it is shipped, else the best match of its ``Accept-Language``, else English. Mails to a user use
that user's language (``force_locale``), whoever sends them.
"""

from __future__ import annotations

from pathlib import Path

from babel import Locale
from flask import Flask, current_app, has_request_context, request
from flask_babel import Babel, force_locale, get_babel, get_locale, gettext, lazy_gettext, ngettext
from flask_login import current_user

__all__ = [
    "DEFAULT_LOCALE",
    "N_",
    "TRANSLATIONS",
    "force_locale",
    "get_locale",
    "gettext",
    "init_i18n",
    "language_name",
    "lazy_gettext",
    "ngettext",
    "select_locale",
    "shipped_locales",
]

TRANSLATIONS = Path(__file__).resolve().parent / "translations"
DEFAULT_LOCALE = "en"


def N_(message: str) -> str:  # babel extracts N_("…")
    """Mark an English text for the translators (``make messages``) where it is defined, a module constant or
    catalog-like table, and translate it with ``gettext`` where it is shown (a page, a mail in its recipient's
    language). Errors use ``app.errors.N_``, which also carries the message's values."""
    return message


def init_i18n(app: Flask) -> None:
    """Flask-Babel on ``app``: ``_``/``gettext``/``ngettext`` in templates, the locale picked per request."""
    app.config.setdefault("BABEL_TRANSLATION_DIRECTORIES", str(TRANSLATIONS))
    Babel(app, default_locale=DEFAULT_LOCALE, locale_selector=select_locale)
    # {% trans %} blocks are extracted and looked up with their whitespace collapsed: templates stay indented.
    app.jinja_env.policies["ext.i18n.trimmed"] = True
    app.jinja_env.globals["current_locale"] = lambda: str(get_locale() or DEFAULT_LOCALE)


def shipped_locales() -> list[str]:
    """The locales this deployment serves: English first, then every compiled catalog, by code."""
    cached: list[str] | None = current_app.extensions.get("ami_locales")
    if cached is None:
        found = sorted({str(locale) for locale in get_babel().instance.list_translations()} - {DEFAULT_LOCALE})
        cached = [DEFAULT_LOCALE, *found]
        current_app.extensions["ami_locales"] = cached
    return cached


def language_name(code: str) -> str:
    """A locale's name in its own language ("Deutsch", "français"), for the language picker."""
    name = Locale.parse(code).get_display_name(code) or code
    return name[:1].upper() + name[1:]


def select_locale() -> str:
    """The user's chosen language if shipped, else the best ``Accept-Language`` match, else English."""
    shipped = shipped_locales()
    user = current_user if has_request_context() else None
    chosen = getattr(user, "locale", None) if user is not None and user.is_authenticated else None
    if chosen in shipped:
        return str(chosen)
    if has_request_context():
        return request.accept_languages.best_match(shipped, default=DEFAULT_LOCALE) or DEFAULT_LOCALE
    return DEFAULT_LOCALE
