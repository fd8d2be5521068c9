"""What the connectors lend the layers below them, registered by the app factory: the mailer finds the
admin-marked SMTP account, SMTP accounts may log in with a connected OAuth account's token (XOAUTH2), and the
OAuth code may mail an account's owner (a reconnect notice) through the app's mailer, without either
importing the other's layer."""

from __future__ import annotations

from flask import Flask
from sqlalchemy.orm import Session

from app.connectors import xoauth2
from app.connectors.smtp import system_mailer
from app.extensions import get_settings
from app.mailer import Mailer, set_system_mailer_resolver
from app.oauth.runtime import MAIL_EXTENSION


def register(app: Flask) -> None:
    settings = get_settings(app)

    def mail(db: Session, to: str, subject: str, text: str) -> None:
        Mailer(db, settings).send(to, subject, text)

    app.extensions[MAIL_EXTENSION] = mail
    set_system_mailer_resolver(system_mailer)
    xoauth2.register(app)
