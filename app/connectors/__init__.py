"""Connectors: header generation for API-key providers, connectivity tests, the SMTP mailer.

The system mailer: an admin can mark one SMTP account as the system mailer (app/connectors/smtp.py). The
:class:`~app.connectors.mailer.Mailer` asks :func:`system_mailer_target` first and falls back to
AMI_AUTH_SMTP_URL. The app factory registers the SMTP connector's resolver (app/connectors/wiring.py); another
one can be set with :func:`set_system_mailer_resolver` (tests, embedding).
"""

from __future__ import annotations

from flask import Flask
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.connectors.mailer import SystemMailerResolver, set_system_mailer_resolver, system_mailer_target
from app.extensions import get_database, get_settings

__all__ = ["SystemMailerResolver", "set_system_mailer_resolver", "system_mailer_configured", "system_mailer_target"]


def system_mailer_configured(app: Flask) -> bool:
    """Whether an admin marked an SMTP account as the system mailer."""
    try:
        with Session(get_database(app).engine) as db:
            return system_mailer_target(db, get_settings(app)) is not None
    except SQLAlchemyError:
        return False  # an unmigrated or unreachable database is reported by the migration check
