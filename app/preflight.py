"""Start-up checks: what `ami-auth check-config` reports and what stops a production server from serving."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.extensions import get_cipher, get_database, get_settings
from app.mailer import system_mailer_target
from app.migrate import is_at_head
from app.providers.checks import enabled_config_problems
from app.vault import key_status, unopened_keys


def preflight(app: Flask, *, serving: bool = False) -> list[str]:
    """Problems that make the deployment unusable; production refuses to serve with any of them."""
    settings = get_settings(app)
    problems: list[str] = []
    if serving and not settings.is_production:
        return problems
    try:
        if not is_at_head(get_database(app).engine):
            problems.append("AMI_AUTH_DATABASE_URL: the database is not migrated to head; run `ami-auth db upgrade`")
    except SQLAlchemyError as exc:
        problems.append(f"AMI_AUTH_DATABASE_URL: the database is unreachable ({type(exc).__name__})")
    for check in EXTRA_CHECKS:
        problems.extend(check(app, serving))
    return problems


def _mailer_configured(app: Flask, serving: bool) -> list[str]:
    """Checked by `check-config`, not at serve time: sign-in still works while mail is being set up."""
    settings = get_settings(app)
    # An admin-marked system mailer (an SMTP connector account) also satisfies this.
    if not serving and settings.is_production and not settings.smtp_url and not system_mailer_configured(app):
        return ["AMI_AUTH_SMTP_URL: production needs a mailer (set it, or mark an SMTP account as system mailer)"]
    return []


def _provider_configs_complete(app: Flask, serving: bool) -> list[str]:
    """Checked by `check-config`, not at serve time: one broken provider must not stop password sign-in."""
    if serving:
        return []
    return enabled_config_problems(app)


def system_mailer_configured(app: Flask) -> bool:
    """Whether an admin marked an SMTP account as the system mailer."""
    try:
        with Session(get_database(app).engine) as db:
            return system_mailer_target(db, get_settings(app)) is not None
    except SQLAlchemyError:
        return False  # an unmigrated or unreachable database is reported by the migration check


def _keys_open_the_vault(app: Flask, serving: bool) -> list[str]:
    """Checked at serve time too: a key ring that cannot open the stored secrets (a restore without the escrowed
    keys, a mistyped key) would serve every page and fail on each secret; refuse at once, naming the key."""
    try:
        with Session(get_database(app).engine) as session:
            problems = unopened_keys(session, get_cipher(app))
            rows = key_status(session) if problems else {}
    except SQLAlchemyError:
        return []  # the database check above already says it is unreachable or not migrated
    return [
        f"AMI_AUTH_MASTER_KEYS: key {kid!r} {why}; {rows.get(kid, 0)} stored secret(s) use it. Configure the "
        "escrowed key ring (docs/operations.md, 'Keys'), or restore the backup that goes with these keys"
        for kid, why in sorted(problems.items())
    ]


EXTRA_CHECKS: list[Callable[[Flask, bool], list[str]]] = [
    _mailer_configured,
    _provider_configs_complete,
    _keys_open_the_vault,
]
