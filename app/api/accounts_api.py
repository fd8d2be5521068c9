"""``/api/account-manager/accounts``: connected-account snapshots, and refresh / revoke / delete.

Scopes: ``accounts:read`` to list and read, ``accounts:write`` to refresh, revoke and delete. A snapshot
never holds a secret (``app.api.account_snapshots``); the one endpoint that discloses a credential is
``…/accounts/<id>/headers`` (``app.api.accounts``, scope ``accounts:headers``, service tokens only).
What refresh, revoke and delete mean for each kind of account: ``app.api.account_actions``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Final

from flask import current_app, request
from werkzeug.wrappers import Response

from app.api import account_actions, bodies, provider_types
from app.api.account_snapshots import (
    PAGE_DEFAULT,
    PAGE_MAX,
    REASONS,
    STATUSES,
    Filters,
    Status,
    list_page,
    snapshot,
)
from app.api.registry import DATETIME, PROBLEM, JSONSchema, QueryParam, component, document, nullable
from app.api.schema import PROVIDER_TYPE
from app.api.security import api_audit_ctx, api_auth, api_blueprint, json_response
from app.errors import AppError
from app.extensions import db_session, get_settings
from app.models import ConnectedAccount, utcnow
from app.models.base import ID_MAX
from app.oauth.runtime import OAuthRuntime, runtime
from app.providers.entries import ProviderEntry
from app.providers.registry import get_catalog

bp = api_blueprint("api_account_snapshots", __name__)

TAGS: Final = ("accounts",)
_STR: Final[JSONSchema] = {"type": "string"}


def _snapshot_schema(provider: ProviderEntry) -> JSONSchema:
    """One provider type's snapshot: the common fields, with its own identifiers, provider data and (SMTP) mail."""
    schema: JSONSchema = {
        "type": "object",
        "required": [
            "id",
            "provider_type",
            "auth_mode",
            "provider_config",
            "user_id",
            "label",
            "subject",
            "identifiers",
            "provider_data",
            "scopes",
            "status",
            "status_reason",
            "expires_at",
            "last_used_at",
            "last_verified_at",
            "rotated_at",
            "created_at",
            "last_error",
        ],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "integer"},
            "provider_type": {"const": provider.id},
            "auth_mode": {"const": provider.auth_mode.value},
            "provider_config": {
                "type": "object",
                "required": ["id", "name", "enabled"],
                "additionalProperties": False,
                "properties": {"id": {"type": "integer"}, "name": _STR, "enabled": {"type": "boolean"}},
            },
            "user_id": nullable({"type": "integer"}),
            "label": _STR,
            "subject": nullable({**_STR, "description": "The account's id at the provider (OAuth)."}),
            "identifiers": provider_types.identifiers_schema(provider),
            "provider_data": provider_types.provider_data_schema(provider),
            "scopes": {"type": "array", "items": _STR, "description": "Granted OAuth scopes."},
            "status": {
                "type": "string",
                "enum": list(STATUSES),
                "description": "active: usable. expiring: usable; the access token expires within the refresh "
                "margin and the refresh job is on it. consent_required: the user must reconnect. error: the "
                "last verification or refresh failed (see last_error). disabled: its provider config is "
                "disabled, or no secret is stored.",
            },
            "status_reason": {"type": "string", "enum": list(REASONS)},
            "expires_at": nullable({**DATETIME, "description": "When the access token expires (OAuth)."}),
            "last_used_at": nullable(DATETIME),
            "last_verified_at": nullable(DATETIME),
            "rotated_at": nullable(
                {**DATETIME, "description": "When the secret (API key) or token set was last replaced."}
            ),
            "created_at": DATETIME,
            "last_error": nullable(
                {
                    "type": "object",
                    "required": ["code", "hint", "at"],
                    "additionalProperties": False,
                    "properties": {"code": _STR, "hint": _STR, "at": nullable(DATETIME)},
                }
            ),
        },
    }
    if provider_types.sends_mail(provider):
        schema["required"].append("mail")
        schema["properties"]["mail"] = provider_types.MAIL_USAGE
    return schema


ACCOUNT = provider_types.union(
    "AccountSnapshot",
    provider_types.per_type("AccountSnapshot", _snapshot_schema),
    "provider_type",
    "A connected account, never with a secret; `identifiers` and `provider_data` depend on `provider_type`, and "
    "SMTP accounts have `mail` (their daily cap and today's count).",
)
ACCOUNT_PAGE = component(
    "AccountPage",
    {
        "type": "object",
        "required": ["accounts", "next_cursor"],
        "additionalProperties": False,
        "properties": {
            "accounts": {"type": "array", "items": ACCOUNT},
            "next_cursor": nullable(
                {**_STR, "description": "Pass it as `cursor` for the next page; null on the last page."}
            ),
        },
    },
)
_PROBLEM: Final[JSONSchema] = nullable(PROBLEM)
REFRESH_RESULT = component(
    "AccountRefreshResult",
    {
        "type": "object",
        "required": ["account", "refresh"],
        "additionalProperties": False,
        "properties": {
            "account": ACCOUNT,
            "refresh": {
                "type": "object",
                "required": ["outcome", "error"],
                "additionalProperties": False,
                "properties": {
                    "outcome": {
                        "type": "string",
                        "enum": ["refreshed", "verified", "not_checked", "failed"],
                        "description": "refreshed: OAuth, a new access token is stored. verified: API key or "
                        "SMTP login, the provider accepted it. not_checked: the provider has nothing to check "
                        "against. failed: see error (also recorded as the account's last_error).",
                    },
                    "error": _PROBLEM,
                },
            },
        },
    },
)
_REVOCATION: Final[JSONSchema] = {
    "type": "object",
    "required": ["outcome", "hint"],
    "additionalProperties": False,
    "properties": {
        "outcome": {
            "type": "string",
            "enum": ["revoked", "already_invalid", "unsupported", "nothing_stored", "skipped"],
            "description": "revoked: the provider confirmed. already_invalid: the provider no longer knew the "
            "credential. unsupported: the provider has no revoke API; the credential is only deleted here and "
            "still works there until revoked by hand (hint says how). nothing_stored: there was no credential. "
            "skipped: deleted with force=true without asking the provider.",
        },
        "hint": _STR,
    },
}
REVOKE_RESULT = component(
    "AccountRevokeResult",
    {
        "type": "object",
        "required": ["account", "revocation"],
        "additionalProperties": False,
        "properties": {"account": ACCOUNT, "revocation": _REVOCATION},
    },
)
DELETE_RESULT = component(
    "AccountDeleteResult",
    {
        "type": "object",
        "required": ["id", "deleted", "revocation"],
        "additionalProperties": False,
        "properties": {"id": {"type": "integer"}, "deleted": {"const": True}, "revocation": _REVOCATION},
    },
)
ACCOUNT_ID_PARAM: Final = {
    "account_id": ({"type": "integer", "minimum": 1, "maximum": ID_MAX}, "The connected account's id."),
}
_ID: Final[JSONSchema] = {"type": "integer", "minimum": 1, "maximum": ID_MAX}


def _margin() -> timedelta:
    return timedelta(minutes=get_settings().token_refresh_margin_minutes)


def _account_json(account: ConnectedAccount) -> dict[str, Any]:
    return snapshot(account, utcnow(), _margin())


def _find(account_id: int) -> ConnectedAccount:
    account = db_session().get(ConnectedAccount, account_id)
    if account is None:
        raise AppError("not_found", f"There is no connected account with id {account_id}.", "List accounts for ids.")
    return account


def _runtime() -> OAuthRuntime:
    return runtime(current_app._get_current_object())  # type: ignore[attr-defined]


def _problem(error: AppError | None) -> dict[str, str] | None:
    if error is None:
        return None
    return {"code": error.code, "message": error.text, "hint": error.help}


@bp.get("/account-manager/accounts")
@api_auth("accounts:read")
@document(
    operation_id="listAccounts",
    summary="List connected-account snapshots",
    description="Every connected account (OAuth, API key, SMTP) in id order, filtered and paged: pass the "
    "`next_cursor` of a page as `cursor` for the next one (null on the last page). A snapshot never contains a "
    "secret. Scope `accounts:read`.",
    response=ACCOUNT_PAGE,
    query=(
        QueryParam("provider_type", PROVIDER_TYPE, "Only accounts of this type."),
        QueryParam("provider_config_id", _ID, "Only accounts of this provider config."),
        QueryParam("status", {"type": "string", "enum": list(STATUSES)}, "Only accounts with this status."),
        QueryParam("user_id", _ID, "Only accounts of this user."),
        QueryParam(
            "limit", {"type": "integer", "minimum": 1, "maximum": PAGE_MAX, "default": PAGE_DEFAULT}, "Page size."
        ),
        QueryParam(
            "cursor",
            {"type": "string", "pattern": "^[0-9]{1,10}$"},
            "Opaque: the `next_cursor` of the previous page.",
        ),
    ),
    errors=(422,),
    tags=TAGS,
)
def list_accounts() -> Response:
    filters = Filters(
        provider_type=bodies.query_choice("provider_type", get_catalog().ids()),
        provider_config_id=bodies.query_id("provider_config_id"),
        status=_status_param(),
        user_id=bodies.query_id("user_id"),
    )
    limit = bodies.query_int("limit", default=PAGE_DEFAULT, low=1, high=PAGE_MAX)
    raw_cursor = request.args.get("cursor")
    if raw_cursor is not None and not (raw_cursor.isascii() and raw_cursor.isdigit() and 1 <= len(raw_cursor) <= 10):
        raise AppError("validation_failed", fields={"cursor": "Pass the next_cursor of the previous page unchanged."})
    db = db_session()
    now = utcnow()
    margin = _margin()
    # Ids stop at ID_MAX (a 32-bit column), so a larger cursor is past the end; clamping keeps it in range.
    after = min(int(raw_cursor), ID_MAX) if raw_cursor is not None else None
    page = list_page(db, filters, now=now, margin=margin, limit=limit, after=after)
    return json_response(
        {"accounts": [snapshot(a, now, margin) for a in page.accounts], "next_cursor": page.next_cursor}
    )


def _status_param() -> Status | None:
    value = bodies.query_choice("status", STATUSES)
    return next((s for s in STATUSES if s == value), None)


@bp.get("/account-manager/accounts/<int:account_id>")
@api_auth("accounts:read")
@document(
    operation_id="getAccount",
    summary="One connected-account snapshot",
    description="Never contains a secret. Scope `accounts:read`.",
    response=ACCOUNT,
    path=ACCOUNT_ID_PARAM,
    errors=(404,),
    tags=TAGS,
)
def get_account(account_id: int) -> Response:
    return json_response(_account_json(_find(account_id)))


@bp.post("/account-manager/accounts/<int:account_id>/refresh")
@api_auth("accounts:write")
@document(
    operation_id="refreshAccount",
    summary="Refresh an account now",
    description="OAuth accounts: a refresh-token grant now (new access token; a rotated refresh token is "
    "stored in the same transaction). API-key and SMTP accounts: a key cannot be refreshed, so the stored key "
    "is verified against the provider again (the catalog's verify request) and the outcome recorded. A failure "
    "the provider reports is answered 200 with `refresh.outcome: failed` and the error, which is also the "
    "account's `last_error` (e.g. `consent_required`: the user must reconnect). 409 `conflict` when it cannot "
    "be tried: provider config disabled, no secret yet, or a refresh already in flight (Retry-After). When the "
    "provider cannot judge the credential (no answer, a timeout, a 5xx) the answer is 502 "
    "`provider_unreachable`, or 429 `rate_limited` when it asked to slow down (Retry-After): an outage is not "
    "a bad key, so nothing is recorded on the account. Scope `accounts:write`.",
    response=REFRESH_RESULT,
    path=ACCOUNT_ID_PARAM,
    errors=(404, 409, 502),
    tags=TAGS,
)
def refresh_account(account_id: int) -> Response:
    db = db_session()
    account = _find(account_id)
    result = account_actions.refresh(db, _runtime(), api_audit_ctx(), account)
    db.expire_all()
    return json_response(
        {
            "account": _account_json(_find(account_id)),
            "refresh": {"outcome": result.outcome, "error": _problem(result.error)},
        }
    )


@bp.post("/account-manager/accounts/<int:account_id>/revoke")
@api_auth("accounts:write")
@document(
    operation_id="revokeAccount",
    summary="Revoke an account's credential",
    description="Asks the provider to revoke the stored credential (OAuth: RFC 7009 or the provider's own "
    "request), then deletes it here — ciphertext included. The account stays: an API-key account then needs "
    "a new secret (`status: disabled`, `status_reason: no_secret`; open a replace_secret dialog), an OAuth "
    "account a reconnect by its user (`consent_required`). Providers without a revoke API (OpenAI, Anthropic, "
    "Hugging Face, Azure AD) answer `unsupported`: the credential is forgotten here and `hint` says how to "
    "revoke it by hand. When the provider cannot confirm, nothing changes: 502 `provider_unreachable`, 429 "
    "`rate_limited` or 422 `invalid_config`. Scope `accounts:write`.",
    response=REVOKE_RESULT,
    path=ACCOUNT_ID_PARAM,
    errors=(404, 409, 422, 502),
    tags=TAGS,
)
def revoke_account(account_id: int) -> Response:
    db = db_session()
    account = _find(account_id)
    result = account_actions.revoke(db, _runtime(), api_audit_ctx(), account)
    db.expire_all()
    return json_response(
        {
            "account": _account_json(_find(account_id)),
            "revocation": {"outcome": result.outcome, "hint": result.hint},
        }
    )


@bp.delete("/account-manager/accounts/<int:account_id>")
@api_auth("accounts:write")
@document(
    operation_id="deleteAccount",
    summary="Delete an account (revoking it first where the provider can)",
    description="Revokes the credential at the provider where it has a revoke API, then deletes the account "
    "and every ciphertext it owns (replaced values kept for rollback included). When the provider cannot "
    "confirm the revocation nothing is deleted (502 `provider_unreachable`, …) unless `force=true`, which "
    "deletes here without asking it (`revocation.outcome: skipped`). Scope `accounts:write`.",
    response=DELETE_RESULT,
    response_description="Deleted.",
    path=ACCOUNT_ID_PARAM,
    query=(
        QueryParam(
            "force",
            {"type": "boolean", "default": False},
            "Delete even when the provider cannot be asked to revoke (revoke by hand there).",
        ),
    ),
    errors=(404, 409, 422, 502),
    tags=TAGS,
)
def delete_account(account_id: int) -> Response:
    force = bool(bodies.query_bool("force"))
    db = db_session()
    account = _find(account_id)
    result = account_actions.delete(db, _runtime(), api_audit_ctx(), account, force=force)
    return json_response(
        {"id": account_id, "deleted": True, "revocation": {"outcome": result.outcome, "hint": result.hint}}
    )
