"""Refresh, revoke and delete a connected account for the API — one entry point per action, whatever the
account's auth mode. Each mode's own feature does the work:

* **OAuth** (types that connect through OAuth: Google, GitHub, Azure AD, generic OIDC) — ``app.oauth``:
  refresh = a refresh-token grant now (the same claim as the refresh job, so the two never
  race); revoke = the provider's revocation request (RFC 7009, GitHub's, Google's); delete = revoke, then
  the row and its token set.
* **API key / SMTP** — ``app.connectors.accounts``: an API key cannot be refreshed, so refresh =
  verify the stored key against the provider again (the catalog's verify request) and record the outcome;
  revoke = the provider's revoke request where the catalog has one — no API-key provider in the catalog
  has (OpenAI, Anthropic, Hugging Face publish none) — else the key is only forgotten here and the result
  says how to revoke it by hand; delete = the same, then the row.

"Revoke" keeps the account (the CMS can show it and ask for a new key or a reconnect); its stored
credential is deleted — ciphertext included — and it moves to ``pending`` (API keys: "needs a secret")
or ``consent_required`` (OAuth: only the user can reconnect). "Delete" removes the account and every
ciphertext it owns. Functions commit: a provider call must not happen inside an open write transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, NoReturn

from sqlalchemy.orm import Session

from app import audit
from app.connectors import accounts, headers
from app.errors import AppError
from app.models import ConnectedAccount
from app.oauth.connections import CONSENT_REQUIRED, load_tokens, revoke_account
from app.oauth.provider import revoke_tokens
from app.oauth.renewal import refresh_access_token
from app.oauth.runtime import OAuthRuntime, build_provider
from app.providers.entries import ProviderEntry
from app.providers.registry import entry as catalog_entry
from app.vault import SecretUnreadable, delete_secrets

OWNER: Final = "connected_account"

RefreshOutcome = Literal["refreshed", "verified", "not_checked", "failed"]
# The provider could not answer (down, a timeout, a 5xx) or asked us to slow down: that says nothing about the
# credential, so it is not recorded on the account as a failed check; the call itself answers the error.
TRANSIENT: Final = frozenset({"provider_unreachable", "rate_limited"})
RevokeOutcome = Literal["revoked", "already_invalid", "unsupported", "nothing_stored", "skipped"]


@dataclass(frozen=True)
class RefreshResult:
    outcome: RefreshOutcome
    error: AppError | None = None


@dataclass(frozen=True)
class RevokeResult:
    """``revoked``/``already_invalid``: the provider confirmed (or no longer knew the credential);
    ``unsupported``: it has no revoke API — ``hint`` says how to do it by hand; ``nothing_stored``: there
    was no credential; ``skipped``: delete with ``force`` after the provider could not be asked."""

    outcome: RevokeOutcome
    hint: str = ""


def _target(account: ConnectedAccount) -> str:
    return f"connected_account:{account.id}"


def _entry(account: ConnectedAccount) -> ProviderEntry:
    return catalog_entry(account.provider_config.provider_type)


def _kind(provider: ProviderEntry) -> Literal["oauth", "connector"]:
    if provider.capabilities.connect == "oauth":
        return "oauth"
    if provider.capabilities.connect == "secret":
        return "connector"
    raise AppError(
        "conflict",
        f"{provider.display_name} accounts cannot be refreshed or revoked here.",
        "Only OAuth, API-key and SMTP accounts support this.",
    )


def _require_enabled(account: ConnectedAccount) -> None:
    if not account.provider_config.enabled:
        raise AppError(
            "conflict",
            f"The provider config “{account.provider_config.name}” is disabled.",
            "Enable it first (PATCH /api/account-manager/provider-configs/{id} with enabled: true).",
        )


def refresh(db: Session, rt: OAuthRuntime, ctx: audit.AuditContext, account: ConnectedAccount) -> RefreshResult:
    """Refresh an OAuth token / re-verify an API key now; the outcome is recorded on the account.

    A failure the provider reported is a result (``failed`` with the error), not an exception: the request
    itself succeeded and the account now says what went wrong. Raises ``conflict`` when it cannot be tried
    (provider config disabled, no secret yet, a refresh already in flight), and the provider's
    ``provider_unreachable`` (502) or ``rate_limited`` (429) when it could not judge the credential: an outage
    is not a bad key, so the account's status is left as it was.
    """
    provider = _entry(account)
    kind = _kind(provider)
    _require_enabled(account)
    if kind == "connector":
        if account.status == "pending":
            raise AppError(
                "conflict",
                "This account has no secret yet.",
                "Enter it in a secure dialog (POST /api/account-manager/dialogs, kind replace_secret).",
            )
        account_id = account.id
        verification = accounts.verify_stored(db, rt.cipher, rt.client, rt.settings, ctx, account)
        if verification.error is not None and verification.error.code in TRANSIENT:
            db.rollback()  # nothing is recorded against the key
            _transient(db, ctx, account_id, verification.error)
        db.commit()
        outcome: RefreshOutcome = {"ok": "verified", "skipped": "not_checked"}.get(verification.status, "failed")  # type: ignore[assignment]
        return RefreshResult(outcome, verification.error)
    account_id = account.id
    db.commit()  # no transaction stays open across the provider call
    try:
        refresh_access_token(db, account, rt)
    except AppError as exc:
        if exc.code in ("conflict", "not_found"):
            raise
        db.rollback()
        if exc.code in TRANSIENT:
            _transient(db, ctx, account_id, exc)
        _refresh_failed(db, ctx, account_id, exc)
        return RefreshResult("failed", exc)
    audit.record(db, ctx, "connected_account.refresh", target=f"connected_account:{account_id}", details={"via": "api"})
    db.commit()
    return RefreshResult("refreshed")


def _refresh_failed(db: Session, ctx: audit.AuditContext, account_id: int, error: AppError, **details: object) -> None:
    audit.record(
        db,
        ctx,
        "connected_account.refresh",
        target=f"connected_account:{account_id}",
        outcome="failure",
        details={"code": error.code, "via": "api", **details},
    )
    db.commit()


def _transient(db: Session, ctx: audit.AuditContext, account_id: int, error: AppError) -> NoReturn:
    """Audit a refresh the provider could not answer, then raise its error (the credential was not judged)."""
    _refresh_failed(db, ctx, account_id, error, recorded=False)
    fields = {} if error.code == "rate_limited" else dict(error.fields)
    raise AppError(error.code, error.text, error.help, fields, retry_after=error.retry_after)


def _oauth_revoke(db: Session, rt: OAuthRuntime, account: ConnectedAccount) -> RevokeResult:
    """The provider's revocation of the stored grant (nothing changes here when it fails)."""
    try:
        tokens = load_tokens(db, rt.cipher, account.id)
    except SecretUnreadable as exc:
        raise AppError("secret_unreadable", exc.text) from None
    if tokens is None:
        return RevokeResult("nothing_stored")
    try:
        provider = build_provider(db, rt, account.provider_config)
    except SecretUnreadable as exc:
        raise AppError("secret_unreadable", exc.text) from None
    if not provider.revoke_supported:
        return RevokeResult("unsupported", provider.revoke_hint)
    return RevokeResult(revoke_tokens(rt.client, provider, tokens))


def _connector_revoke(db: Session, rt: OAuthRuntime, account: ConnectedAccount) -> RevokeResult:
    provider = _entry(account)
    spec = provider.revoke
    if account.status == "pending":
        return RevokeResult("nothing_stored")
    if spec is None or not spec.supported:
        return RevokeResult("unsupported", spec.hint if spec is not None else "")
    accounts.revoke_at_provider(db, rt.cipher, rt.client, provider, account)
    return RevokeResult("revoked")


def revoke(db: Session, rt: OAuthRuntime, ctx: audit.AuditContext, account: ConnectedAccount) -> RevokeResult:
    """Revoke the account's credential at the provider and delete it here; the account stays.

    Raises the provider's error (``provider_unreachable``, ``rate_limited``, ``invalid_config``) when it
    could not confirm: then nothing changed.
    """
    provider = _entry(account)
    kind = _kind(provider)
    db.commit()  # no transaction stays open across the provider call
    try:
        result = _oauth_revoke(db, rt, account) if kind == "oauth" else _connector_revoke(db, rt, account)
    except AppError as exc:
        db.rollback()
        audit.record(
            db,
            ctx,
            "connected_account.revoke",
            target=_target(account),
            outcome="failure",
            details={"type": provider.id, "code": exc.code, "via": "api"},
        )
        db.commit()
        raise
    deleted = delete_secrets(db, OWNER, account.id)
    account.status = CONSENT_REQUIRED if kind == "oauth" else "pending"
    account.last_error_code = account.last_error_hint = None
    account.last_error_at = None
    account.error_attempts = 0
    account.next_attempt_at = None
    if kind == "connector":
        headers.forget_account(db, account.id)
    audit.record(
        db,
        ctx,
        "connected_account.revoke",
        target=_target(account),
        details={"type": provider.id, "revoke": result.outcome, "vault_rows_deleted": deleted, "via": "api"},
    )
    db.commit()
    accounts.scrub_deleted(db)
    return result


def delete(
    db: Session, rt: OAuthRuntime, ctx: audit.AuditContext, account: ConnectedAccount, *, force: bool = False
) -> RevokeResult:
    """Revoke where the provider can, then delete the account and every ciphertext it owns.

    A failed revocation raises and deletes nothing, unless ``force`` (then the result is ``skipped``).
    """
    provider = _entry(account)
    kind = _kind(provider)
    db.commit()
    if kind == "oauth":
        result = revoke_account(db, account, rt, ctx, force=force)
        if result.outcome == "not_revoked":
            if not force:
                raise result.error or AppError("provider_unreachable", "The provider did not confirm the revocation.")
            outcome = RevokeResult("skipped")
        elif result.outcome == "unsupported":
            outcome = RevokeResult("unsupported", provider.revoke.hint if provider.revoke else "")
        else:
            outcome = RevokeResult(result.outcome)
    else:
        was_pending = account.status == "pending"
        try:
            deleted = accounts.delete_account(db, rt.cipher, rt.client, ctx, account, skip_revoke=force)
        except AppError:
            db.commit()  # keep the audit record of the failed revocation; the account stays
            raise
        db.commit()
        if deleted.revoked:
            outcome = RevokeResult("revoked")
        elif force and provider.revoke is not None and provider.revoke.supported and not was_pending:
            outcome = RevokeResult("skipped")
        elif was_pending:
            outcome = RevokeResult("nothing_stored")
        else:
            outcome = RevokeResult("unsupported", deleted.hint)
    accounts.scrub_deleted(db)
    return outcome
