"""Connectors: header generation for API-key providers, connectivity tests, the SMTP mailer.

The system-mailer hook: the SMTP connector (a later issue) lets an admin mark one SMTP account as the
system mailer. It registers a resolver here with :func:`set_system_mailer_resolver`; the
:class:`~app.connectors.mailer.Mailer` asks :func:`system_mailer_target` first and falls back to
AMI_AUTH_SMTP_URL. Until a resolver is registered there is no system mailer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from flask import Flask
from sqlalchemy.orm import Session

from app.settings import Settings

if TYPE_CHECKING:
    from app.connectors.mailer import SmtpTarget

SystemMailerResolver = Callable[[Session, Settings], "SmtpTarget | None"]

_resolver: SystemMailerResolver | None = None


def set_system_mailer_resolver(resolver: SystemMailerResolver | None) -> None:
    """Register (or, with None, remove) the function that returns the admin-marked SMTP account's target."""
    global _resolver
    _resolver = resolver


def system_mailer_target(db: Session, settings: Settings) -> SmtpTarget | None:
    """The admin-marked system mailer's SMTP target, or None when there is none."""
    return _resolver(db, settings) if _resolver is not None else None


def system_mailer_configured(app: Flask) -> bool:
    """Whether an admin marked an SMTP account as the system mailer."""
    if _resolver is None:
        return False
    from app.extensions import get_database, get_settings

    with Session(get_database(app).engine) as db:
        return system_mailer_target(db, get_settings(app)) is not None
