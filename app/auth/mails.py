"""The app's own mails: rendering from templates/mail/* and sending through the one Mailer.

Rendering uses a plain Jinja2 environment (not Flask's), so the CLI and jobs can send mail too; links
are absolute, built from AMI_AUTH_BASE_URL. A mail goes out in its recipient's language: the user's chosen
locale when there is one (``locale=``, else ``user.locale`` of the context), else the current request's
(app.i18n); outside an app (no catalogs to read) it stays English.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from flask import current_app, has_app_context
from flask_babel import get_translations
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from sqlalchemy.orm import Session

from app.audit import AuditContext
from app.auth import throttle
from app.errors import translated
from app.i18n import DEFAULT_LOCALE, N_, force_locale, get_locale, shipped_locales
from app.mailer import Mailer
from app.settings import Settings

TEMPLATES = Path(__file__).resolve().parent.parent.parent / "templates"
DEFAULT_ACCENT = "#2f5bea"

MailKind = Literal[
    "verify",
    "reset",
    "reset_unknown",
    "reset_disabled",
    "invite",
    "signup_existing",
    "unlock",
    "unlock_unknown",
    "signin_code",
    "signin_code_unknown",
    "email_change",
    "email_change_taken",
    "email_changed",
    "new_device",
]


# Marked here, translated when a mail is rendered: in its recipient's language (render, force_locale).
SUBJECTS: dict[MailKind, str] = {
    "verify": N_("Confirm your email address"),
    "reset": N_("Reset your password"),
    "reset_unknown": N_("Password reset requested"),
    "reset_disabled": N_("Password reset requested"),
    "invite": N_("You are invited to %(product)s"),
    "signup_existing": N_("You already have an account"),
    "unlock": N_("Unlock your account"),
    "unlock_unknown": N_("Account unlock requested"),
    "signin_code": N_("Your sign-in code"),
    "signin_code_unknown": N_("Sign-in code requested"),
    "email_change": N_("Confirm your new email address"),
    "email_change_taken": N_("Email change requested"),
    "email_changed": N_("Your email address was changed"),
    "new_device": N_("New sign-in to your account"),
}


@dataclass(frozen=True)
class RenderedMail:
    subject: str
    text: str
    html: str


def _gettext(message: str) -> str:
    return str(get_translations().ugettext(message)) if has_app_context() else message


def _ngettext(singular: str, plural: str, n: int) -> str:
    if has_app_context():
        return str(get_translations().ungettext(singular, plural, n))
    return singular if n == 1 else plural


def _current_locale() -> str:
    return str((get_locale() if has_app_context() else None) or DEFAULT_LOCALE)


@lru_cache(maxsize=1)
def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.i18n"],
    )
    # The pages' conventions (app.i18n): newstyle gettext escapes values, {% trans %} is trimmed.
    env.install_gettext_callables(_gettext, _ngettext, newstyle=True)  # type: ignore[attr-defined]
    env.policies["ext.i18n.trimmed"] = True
    env.globals["current_locale"] = _current_locale
    # A value marked with its words (app.errors.N_: a device summary, "unknown address") in the mail's language.
    env.filters["translated"] = translated
    return env


def recipient_locale(locale: str | None) -> str | None:
    """The locale to force for a mail: the recipient's choice when this deployment ships it, else None (the
    current request's language stays)."""
    if locale and has_app_context() and locale in shipped_locales():
        return locale
    return None


def render(kind: MailKind, settings: Settings, *, locale: str | None = None, **context: Any) -> RenderedMail:
    """Subject, text and HTML of one mail, in ``locale`` (else the ``user``'s chosen one, else the request's)."""
    chosen = recipient_locale(locale or getattr(context.get("user"), "locale", None))
    if chosen is None:
        return _render(kind, settings, context)
    with force_locale(chosen):
        return _render(kind, settings, context)


def _render(kind: MailKind, settings: Settings, context: dict[str, Any]) -> RenderedMail:
    env = _environment()
    accent = settings.brand_accent or DEFAULT_ACCENT
    subject = _gettext(SUBJECTS[kind]) % {"product": settings.brand_name}
    values = {
        "product": settings.brand_name,
        "base_url": settings.base_url,
        "subject": subject,
        "accent": accent,
        "accent_ink": ink_for(accent),
        "logo_url": link(settings, "/brand/logo") if settings.brand_logo is not None else None,
        **context,
    }
    return RenderedMail(
        subject=subject,
        text=env.get_template(f"mail/{kind}.txt").render(values),
        html=env.get_template(f"mail/{kind}.html").render(values),
    )


def link(settings: Settings, path: str) -> str:
    return settings.base_url + path


def check_mail_allowed(db: Session, settings: Settings, ctx: AuditContext, *, purpose: str, to: str) -> None:
    """Throttle call site for every mail the app sends on someone's request (reset, verify, invite, sign-up,
    unlock).

    Called *before* any token is issued, with the same arguments whether or not an account exists, so
    a refusal (``rate_limited``) reveals nothing. Per recipient always; per client IP except for an
    admin's invitations (an admin inviting a team is not one client spraying addresses) and for the
    CLI, which has no client address.
    """
    if not has_app_context():  # the throttle's storage belongs to the app; nothing to count against
        return
    storage = current_app.extensions["ami_limits"]
    throttle.check_mail_send(storage, settings, email=to, ip=ctx.ip, count_ip=bool(ctx.ip) and purpose != "invite")


def send(db: Session, settings: Settings, to: str, mail: RenderedMail) -> None:
    """Send after committing: a mail must never describe a change that was rolled back."""
    Mailer(db, settings).send(to, mail.subject, mail.text, mail.html)


def ink_for(accent: str) -> str:
    """Black or white text on the accent, whichever contrasts more (WCAG 2 relative luminance)."""

    def channel(hex_pair: str) -> float:
        c = int(hex_pair, 16) / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(accent[i : i + 2]) for i in (1, 3, 5))
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "#000" if (luminance + 0.05) / 0.05 > 1.05 / (luminance + 0.05) else "#fff"
