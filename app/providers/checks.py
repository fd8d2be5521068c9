"""Start-up checks on stored provider configs (what `ami-auth check-config` reports)."""

from __future__ import annotations

from flask import Flask
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.errors import AppError
from app.extensions import get_cipher, get_database
from app.models import ProviderConfig
from app.providers import configs
from app.providers.validation import labels
from app.vault import SecretUnreadable


def enabled_config_problems(app: Flask) -> list[str]:
    """Enabled configs whose required settings are missing or invalid, or whose secrets cannot be read."""
    problems: list[str] = []
    cipher = get_cipher(app)
    session = Session(get_database(app).engine)
    try:
        enabled = list(session.scalars(select(ProviderConfig).where(ProviderConfig.enabled.is_(True))))
        for cfg in enabled:
            where = f"provider config {cfg.name!r} (#{cfg.id}, {cfg.provider_type})"
            try:
                provider = configs.entry_for(cfg)
            except AppError:
                problems.append(f"{where}: enabled, but its type is not in the provider catalog")
                continue
            missing = configs.missing_for_enable(session, cfg)
            if missing:
                names = ", ".join(labels(provider, "config", missing))
                problems.append(f"{where}: enabled, but missing or invalid: {names}")
            try:
                configs.read_secrets(session, cipher, provider, cfg)
            except SecretUnreadable as exc:
                problems.append(f"{where}: {exc.text}")
    except SQLAlchemyError:
        return []  # an unmigrated or unreachable database is reported by the migration check
    finally:
        session.close()
    return problems
