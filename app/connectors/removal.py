"""Removing an API-key or SMTP account's credential: revoke it at the provider where the catalog has a revoke
request (through the one revocation implementation, :mod:`app.oauth.revocation`), then delete the account
and every ciphertext it owns; purge replaced values past their grace period.

Functions take a Session and never commit: the caller owns the transaction (``scrub_deleted`` aside).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy.orm import Session

from app import audit
from app.connectors import headers
from app.connectors.headers import OWNER, account_values, load_secrets
from app.errors import AppError
from app.extensions import SQLITE_BUSY_TIMEOUT_MS, end_read
from app.models import ConnectedAccount
from app.models.base import utcnow
from app.net import OutboundClient
from app.oauth.revocation import RevocationRequest, revoke
from app.oauth.tokens import ClientCredentials
from app.providers import configs
from app.providers.entries import ProviderEntry
from app.providers.registry import entry as catalog_entry
from app.providers.templating import render_template_string
from app.vault import Cipher, Secret, delete_secrets, purge_retired

__all__ = ["DeleteResult", "delete_account", "purge_retired_secrets", "revoke_at_provider", "scrub_deleted"]

# Milliseconds a WAL reset after a delete may wait for readers and writers (see scrub_deleted).
SCRUB_WAIT_MS: Final = 250


def _target(account: ConnectedAccount) -> str:
    return f"connected_account:{account.id}"


@dataclass(frozen=True)
class DeleteResult:
    """``revoked``: True when the provider confirmed the revocation, False when it has no revoke API
    (``hint`` says what to do by hand) or the admin chose to delete without it."""

    revoked: bool
    hint: str
    secret_rows_deleted: int


def _revoke(
    db: Session,
    cipher: Cipher,
    client: OutboundClient,
    provider: ProviderEntry,
    account: ConnectedAccount,
) -> None:
    """Send the entry's revoke request with the account's credentials; raises AppError when it fails."""
    spec = provider.revoke
    assert spec is not None and spec.supported
    values = account_values(provider, account)
    secrets: dict[str, Any] = dict(load_secrets(db, cipher, provider, account.id))
    config_secrets = configs.read_secrets(db, cipher, provider, account.provider_config)
    secrets.update({k: v for k, v in config_secrets.items() if v is not None})
    scopes = {"config": values["config"], "account": values["account"], "secret": secrets, "token": {}}
    if not spec.url:
        raise AppError("invalid_config", f"{provider.display_name} revokes through discovery; not an API-key account.")
    credentials: ClientCredentials | None = None
    if spec.auth == "basic":
        client_secret = secrets.get("client_secret")
        credentials = ClientCredentials(
            str(values["config"].get("client_id") or ""),
            client_secret.reveal() if isinstance(client_secret, Secret) else "",
            "client_secret_basic",
        )
    request = RevocationRequest(
        url=render_template_string(spec.url, **scopes),
        body={name: render_template_string(value, **scopes) for name, value in spec.body.items()},
        method="DELETE" if spec.method == "DELETE" else "POST",
        body_format=spec.body_format,
        client=credentials,
        headers=headers.render_auth(provider, values, secrets).headers if spec.auth == "bearer" else {},
        expect_status=spec.expect_status,
    )
    end_read(db)  # nothing held while the provider answers (app.connectors.accounts)
    revoke(client, request)


def revoke_at_provider(
    db: Session, cipher: Cipher, client: OutboundClient, provider: ProviderEntry, account: ConnectedAccount
) -> None:
    """Call the entry's revoke request with the account's stored credentials (``provider.revoke.supported``
    must be true); raises AppError when the provider does not confirm. Nothing is deleted here."""
    _revoke(db, cipher, client, provider, account)


def delete_account(
    db: Session,
    cipher: Cipher,
    client: OutboundClient,
    ctx: audit.AuditContext,
    account: ConnectedAccount,
    *,
    skip_revoke: bool = False,
    provider: ProviderEntry | None = None,
) -> DeleteResult:
    """Revoke the credential where the provider has an API for it, then delete the account and every
    ciphertext it owns (retired values included). A failed revocation raises and deletes nothing, unless
    ``skip_revoke`` (the admin's "delete without revoking")."""
    provider = provider or catalog_entry(account.provider_config.provider_type)
    spec = provider.revoke
    revoked = False
    hint = spec.hint if spec is not None else ""
    if spec is not None and spec.supported and account.status != "pending" and not skip_revoke:
        try:
            _revoke(db, cipher, client, provider, account)
        except AppError as exc:
            audit.record(
                db,
                ctx,
                "account.revoke",
                target=_target(account),
                outcome="failure",
                details={"type": provider.id, "code": exc.code},
            )
            raise
        revoked = True
        audit.record(db, ctx, "account.revoke", target=_target(account), details={"type": provider.id})
    deleted = delete_secrets(db, OWNER, account.id)
    audit.record(
        db,
        ctx,
        "account.delete",
        target=_target(account),
        details={
            "type": provider.id,
            "label": account.label,
            "revoked": revoked,
            "revoke_skipped": skip_revoke,
            "vault_rows_deleted": deleted,
        },
    )
    headers.forget_account(db, account.id)
    db.delete(account)
    db.flush()
    return DeleteResult(revoked, "" if revoked else hint, deleted)


def scrub_deleted(db: Session) -> None:
    """After a committed delete of ciphertext: on SQLite, fold the write-ahead log into the database and
    truncate it. ``secure_delete`` zeroes the freed space in the database pages, but in WAL mode the frames
    written when the value was stored stay in the -wal file until it is reset; this resets it now.

    Best effort, and brief: a reset must wait for every reader of an older snapshot (a backup, an audit
    verification walking the chain) and holds back every writer while it waits, so it waits at most
    :data:`SCRUB_WAIT_MS` instead of the connection's ``busy_timeout``. When a reader is still there, SQLite
    checkpoints what it can and the next reset (the next delete, the ``purge-secrets`` job) finishes."""
    if db.get_bind().dialect.name == "sqlite":
        connection = db.connection()
        connection.exec_driver_sql(f"PRAGMA busy_timeout={SCRUB_WAIT_MS}")
        try:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            connection.exec_driver_sql(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        db.commit()


def purge_retired_secrets(db: Session, ctx: audit.AuditContext, now: datetime | None = None) -> int:
    """Delete replaced values whose rollback grace period is over (``ami-auth jobs purge-secrets``)."""
    count = purge_retired(db, now or utcnow())
    audit.record(db, ctx, "secrets.purge_retired", target="secrets", details={"rows_deleted": count})
    return count
