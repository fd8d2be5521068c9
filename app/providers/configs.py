"""Provider configs: create, update, enable, disable and delete — the rules the console, the CLI and
`providers apply` share. Non-secret values live in ``ProviderConfig.config``; secret fields in the vault
(owner ``provider_config``). Every change is audited with field names only, never values.

Functions take a Session and never commit: the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from app import audit
from app.errors import AppError
from app.i18n import gettext as _
from app.models import AuditEvent, ConnectedAccount, ProviderConfig
from app.providers.catalog_messages import catalog_text
from app.providers.entries import ProviderEntry
from app.providers.registry import entry as catalog_entry
from app.providers.validation import labels, missing_fields, split_secrets
from app.settings import Settings
from app.vault import Cipher, Secret, SecretMeta, delete_secrets, get_secret, put_secret, secret_meta

OWNER = "provider_config"
# The vault owner type of a connected account's secret fields (used by the connectors work).
ACCOUNT_OWNER = "connected_account"
NAME_MAX = 200


@dataclass
class Changes:
    """What a save changed, by field name (what the audit log and `apply --dry-run` report)."""

    fields: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    renamed: bool = False

    def __bool__(self) -> bool:
        return bool(self.fields or self.secrets or self.renamed)


def entry_for(cfg: ProviderConfig) -> ProviderEntry:
    return catalog_entry(cfg.provider_type)


def list_configs(db: Session) -> list[ProviderConfig]:
    return list(db.scalars(select(ProviderConfig).order_by(ProviderConfig.provider_type, ProviderConfig.name)))


def get_config(db: Session, config_id: int) -> ProviderConfig:
    cfg = db.get(ProviderConfig, config_id)
    if cfg is None:
        raise AppError("not_found", _("There is no such provider config."))
    return cfg


def find_config(db: Session, ref: str) -> ProviderConfig:
    """By numeric id or by exact name (what the CLI accepts as ID)."""
    ref = ref.strip()
    if ref.isdigit():
        return get_config(db, int(ref))
    cfg = find_by_name(db, ref)
    if cfg is None:
        raise AppError("not_found", _("There is no provider config with id or name %(ref)s.", ref=repr(ref)))
    return cfg


def find_by_name(db: Session, name: str) -> ProviderConfig | None:
    return db.scalars(select(ProviderConfig).where(func.lower(ProviderConfig.name) == name.strip().lower())).first()


def clean_name(db: Session, name: str | None, *, current_id: int | None = None) -> str:
    """The config's name: required, at most 200 characters, unique regardless of case (apply matches by it)."""
    value = (name or "").strip()
    if not value:
        raise AppError("validation_failed", fields={"name": _("This field is required.")})
    if len(value) > NAME_MAX:
        raise AppError("validation_failed", fields={"name": _("Use at most %(limit)s characters.", limit=NAME_MAX)})
    other = find_by_name(db, value)
    if other is not None and other.id != current_id:
        raise AppError(
            "conflict", _("That name is taken."), fields={"name": _("Another provider config already has this name.")}
        )
    return value


def secret_states(db: Session, provider: ProviderEntry, cfg: ProviderConfig | None) -> dict[str, SecretMeta | None]:
    """Per secret config field: its metadata ("set · last changed …") or None when not set."""
    if cfg is None:
        return {spec.name: None for spec in provider.secret_fields("config")}
    return {spec.name: secret_meta(db, OWNER, cfg.id, spec.name) for spec in provider.secret_fields("config")}


def secrets_set(db: Session, provider: ProviderEntry, cfg: ProviderConfig | None) -> frozenset[str]:
    return frozenset(name for name, meta in secret_states(db, provider, cfg).items() if meta is not None)


def missing_for_enable(db: Session, cfg: ProviderConfig) -> dict[str, str]:
    """{field: message} for what must be set and valid before the config may be enabled."""
    provider = entry_for(cfg)
    return missing_fields(provider, "config", cfg.config or {}, secrets_set(db, provider, cfg))


def _grace(settings: Settings) -> timedelta:
    # The replaced value stays recoverable for the grace period, then the purge job deletes it.
    return timedelta(days=settings.secret_grace_days)


def _store_secrets(
    db: Session, cipher: Cipher, settings: Settings, cfg: ProviderConfig, secrets: Mapping[str, Secret]
) -> None:
    for name, value in secrets.items():
        put_secret(db, cipher, OWNER, cfg.id, name, value, grace=_grace(settings))


def create_config(
    db: Session,
    cipher: Cipher,
    settings: Settings,
    ctx: audit.AuditContext,
    provider: ProviderEntry,
    name: str,
    clean: Mapping[str, Any],
    *,
    created_by: int | None = None,
    enabled: bool = False,
) -> ProviderConfig:
    """Store a new config from ``validate_submission`` output. Starts disabled unless ``enabled``."""
    name = clean_name(db, name)
    plain, secrets = split_secrets(provider, "config", clean)
    cfg = ProviderConfig(provider_type=provider.id, name=name, enabled=False, config=plain, created_by=created_by)
    db.add(cfg)
    db.flush()
    _store_secrets(db, cipher, settings, cfg, secrets)
    audit.record(
        db,
        ctx,
        "provider_config.create",
        target=f"provider_config:{cfg.id}",
        details={"type": provider.id, "name": name, "fields": sorted(plain), "encrypted_fields": sorted(secrets)},
    )
    if enabled:
        set_enabled(db, ctx, cfg, True)
    return cfg


def update_config(
    db: Session,
    cipher: Cipher,
    settings: Settings,
    ctx: audit.AuditContext,
    cfg: ProviderConfig,
    name: str,
    clean: Mapping[str, Any],
) -> Changes:
    """Replace the config's values with ``clean``; secrets absent from ``clean`` keep their stored value."""
    provider = entry_for(cfg)
    name = clean_name(db, name, current_id=cfg.id)
    plain, secrets = split_secrets(provider, "config", clean)
    before = dict(cfg.config or {})
    changes = Changes(
        fields=sorted(k for k in set(before) | set(plain) if before.get(k) != plain.get(k)),
        secrets=sorted(secrets),
        renamed=name != cfg.name,
    )
    if not changes:
        return changes
    cfg.name = name
    cfg.config = plain
    _store_secrets(db, cipher, settings, cfg, secrets)
    if cfg.enabled:
        missing = missing_fields(provider, "config", plain, secrets_set(db, provider, cfg))
        if missing:
            # The form already requires these; this guards a catalog change that added a required field.
            raise AppError("invalid_config", _("An enabled provider config must stay complete."), fields=missing)
    audit.record(
        db,
        ctx,
        "provider_config.update",
        target=f"provider_config:{cfg.id}",
        details={
            "type": cfg.provider_type,
            "name": name,
            "fields": changes.fields,
            "encrypted_fields_replaced": changes.secrets,
            "renamed": changes.renamed,
        },
    )
    return changes


def set_enabled(db: Session, ctx: audit.AuditContext, cfg: ProviderConfig, enabled: bool) -> bool:
    """Enable or disable; enabling refuses (invalid_config, listing the fields) an incomplete config.

    Returns whether anything changed.
    """
    action = "provider_config.enable" if enabled else "provider_config.disable"
    if enabled:
        missing = missing_for_enable(db, cfg)
        if missing:
            names = labels(entry_for(cfg), "config", missing)
            audit.record(
                db,
                ctx,
                action,
                target=f"provider_config:{cfg.id}",
                outcome="failure",
                details={"type": cfg.provider_type, "name": cfg.name, "missing": sorted(missing)},
            )
            raise AppError(
                "invalid_config",
                _("This provider config cannot be enabled until its required settings are set and valid."),
                _("Missing or invalid: %(fields)s.", fields=", ".join(catalog_text(n) for n in names)),
                fields=missing,
            )
    if cfg.enabled == enabled:
        return False
    cfg.enabled = enabled
    audit.record(
        db, ctx, action, target=f"provider_config:{cfg.id}", details={"type": cfg.provider_type, "name": cfg.name}
    )
    return True


def account_count(db: Session, cfg: ProviderConfig) -> int:
    return int(
        db.scalar(
            select(func.count()).select_from(ConnectedAccount).where(ConnectedAccount.provider_config_id == cfg.id)
        )
        or 0
    )


def delete_config(db: Session, ctx: audit.AuditContext, cfg: ProviderConfig) -> None:
    """Delete the config and its secrets (retired values included).

    Refused while accounts use it: deleting those must go through their own revoke-then-delete path, not
    a database cascade that would skip revocation and leave their secrets behind.
    """
    accounts = account_count(db, cfg)
    if accounts:
        raise AppError(
            "conflict",
            _("%(count)s connected account(s) use this provider config.", count=accounts),
            _("Disconnect or delete those accounts first, or disable the config instead."),
        )
    deleted = delete_secrets(db, OWNER, cfg.id)
    audit.record(
        db,
        ctx,
        "provider_config.delete",
        target=f"provider_config:{cfg.id}",
        details={"type": cfg.provider_type, "name": cfg.name, "vault_rows_deleted": deleted},
    )
    db.delete(cfg)
    db.flush()


def read_secrets(db: Session, cipher: Cipher, provider: ProviderEntry, cfg: ProviderConfig) -> dict[str, Secret | None]:
    """Decrypt the config's secret fields (for a connectivity test); SecretUnreadable when a key is missing."""
    return {spec.name: get_secret(db, cipher, OWNER, cfg.id, spec.name) for spec in provider.secret_fields("config")}


def expected_next_id(db: Session) -> int:
    """The id the next saved config will most likely get (its redirect URI names it), shown on the create form
    before there is a row. Only a forecast: another config saved first takes it (the view then says so)."""
    bind = db.get_bind()
    if bind.dialect.name == "postgresql":
        seq = db.scalar(text("SELECT pg_get_serial_sequence('provider_configs', 'id')"))
        if seq:
            row = db.execute(text(f"SELECT last_value, is_called FROM {seq}")).one()  # noqa: S608 - a catalog name
            return int(row.last_value) + 1 if row.is_called else int(row.last_value)
    # SQLite (INTEGER PRIMARY KEY without AUTOINCREMENT): the largest rowid plus one.
    return int(db.scalar(select(func.max(ProviderConfig.id))) or 0) + 1


@dataclass(frozen=True)
class LastTest:
    """The outcome of a config's most recent "Test connection" (console, CLI or API), from the audit log."""

    outcome: str
    code: str | None
    at: datetime


def last_test(db: Session, cfg: ProviderConfig) -> LastTest | None:
    event = db.scalars(
        select(AuditEvent)
        .where(AuditEvent.action == "provider_config.test", AuditEvent.target == f"provider_config:{cfg.id}")
        .order_by(AuditEvent.id.desc())
        .limit(1)
    ).first()
    if event is None:
        return None
    details = event.details or {}
    return LastTest(event.outcome, details.get("code"), event.at)
