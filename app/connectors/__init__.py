"""Connectors: header generation for API-key providers, connectivity tests, the SMTP mailer.

The system-mailer hook: an admin can mark one SMTP account as the system mailer (app/connectors/smtp.py).
The :class:`~app.connectors.mailer.Mailer` asks :func:`system_mailer_target` first and falls back to
AMI_AUTH_SMTP_URL. The SMTP connector's resolver answers unless another one is registered with
:func:`set_system_mailer_resolver` (tests, embedding).
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
    if _resolver is not None:
        return _resolver(db, settings)
    from app.connectors.smtp import system_mailer

    return system_mailer(db, settings)


def system_mailer_configured(app: Flask) -> bool:
    """Whether an admin marked an SMTP account as the system mailer."""
    from sqlalchemy.exc import SQLAlchemyError

    from app.extensions import get_database, get_settings

    try:
        with Session(get_database(app).engine) as db:
            return system_mailer_target(db, get_settings(app)) is not None
    except SQLAlchemyError:
        return False  # an unmigrated or unreachable database is reported by the migration check
