"""``POST /api/account-manager/accounts/<id>/token``: an OAuth account's current access token, for a client that
must call the provider itself (an SDK that takes a token, a browser upload straight to the provider).

Prefer the proxy (``…/proxy/<path>``), which never lets the token out. This hands it out: scope
``accounts:token``, service tokens only, refreshed first when it expires within a minute (the same claimed
refresh the job uses), ``Cache-Control: no-store``, and audited before it leaves (``account.token.disclosed``;
a refusal is ``account.token.refused``). Also here: the OAuth half of ``GET …/headers`` (a bearer header).
"""

from __future__ import annotations

from flask import current_app
from werkzeug.wrappers import Response

from app import audit
from app.api.registry import DATETIME, component, document, nullable
from app.api.security import api_audit_ctx, api_auth, api_blueprint, json_response, principal
from app.connectors.bearer import OAUTH_MODES, current_token
from app.connectors.headers import RequestAuth, account_values, render_auth
from app.connectors.proxy import find_account
from app.errors import AppError
from app.extensions import db_session
from app.models import ConnectedAccount
from app.models.base import ID_MAX
from app.oauth.runtime import runtime
from app.providers.entries import ProviderEntry

bp = api_blueprint("api_account_token", __name__)

ACCESS_TOKEN = component(
    "AccountAccessToken",
    {
        "type": "object",
        "required": ["access_token", "token_type", "expires_at", "scopes"],
        "additionalProperties": False,
        "properties": {
            "access_token": {"type": "string", "description": "The credential: send it as `Authorization: Bearer …`."},
            "token_type": {"type": "string", "description": "As the provider issued it, usually Bearer."},
            "expires_at": nullable({**DATETIME, "description": "When it expires (null: the provider did not say)."}),
            "scopes": {"type": "array", "items": {"type": "string"}, "description": "Granted OAuth scopes."},
        },
    },
)
_PATH = {"account_id": ({"type": "integer", "minimum": 1, "maximum": ID_MAX}, "The connected account's id.")}


def check_limits(account: ConnectedAccount, provider: ProviderEntry) -> None:
    """Refuse an account outside the calling token's account limits (``permission_denied``)."""
    caller = principal()
    limits = caller.token.limits if caller.token is not None else None
    if limits is not None and not limits.allows(account.id, provider.id):
        raise AppError(
            "permission_denied",
            "This service token may not use this account.",
            "Use a token whose account limits include it, or ask an admin for one.",
        )


def oauth_headers(account: ConnectedAccount, provider: ProviderEntry) -> RequestAuth:
    """The headers a request made with OAuth ``account`` carries: the entry's templates with its current access
    token, or ``Authorization: Bearer`` (RFC 6750 §2.1) when the entry names none. May commit (a refresh)."""
    token = current_token(db_session(), runtime(current_app._get_current_object()), provider, account)  # type: ignore[attr-defined]
    if provider.headers:
        return render_auth(provider, account_values(provider, account), {}, {"access_token": token.value})
    return RequestAuth({"Authorization": f"{token.token_type.title()} {token.value}"}, {})


@bp.post("/account-manager/accounts/<int:account_id>/token")
@api_auth("accounts:token", cookies=False, audit_use=False)
@document(
    operation_id="getAccountAccessToken",
    summary="The current access token of an OAuth account",
    description=(
        "For clients that must call the provider themselves; prefer the proxy, which never discloses it. The "
        "token is refreshed first when it expires within a minute. **The response contains the credential**: "
        "every call is audited (`account.token.disclosed`) and answered `Cache-Control: no-store`. Service "
        "tokens with the scope `accounts:token` only. 404 for an account that is not an OAuth account; 409 "
        "`consent_required` when it must be reconnected, `conflict` when its provider config is disabled."
    ),
    response=ACCESS_TOKEN,
    path=_PATH,
    errors=(404, 409, 502),
    tags=("accounts",),
)
def account_token(account_id: int) -> Response:
    db = db_session()
    ctx = api_audit_ctx()
    target = f"connected_account:{account_id}"
    try:
        account, provider = find_account(db, account_id)
        if provider.auth_mode not in OAUTH_MODES:
            raise AppError("not_found", "There is no such OAuth account.", "API keys are used through the proxy.")
        check_limits(account, provider)
        token = current_token(db, runtime(current_app._get_current_object()), provider, account)  # type: ignore[attr-defined]
    except AppError as exc:
        db.rollback()
        audit.record(db, ctx, "account.token.refused", target=target, outcome="failure", details={"code": exc.code})
        db.commit()
        raise
    audit.record(
        db, ctx, "account.token.disclosed", target=target, details={"via": "api", "expires_at": token.expires_at}
    )
    db.commit()
    response = json_response(
        {
            "access_token": token.value,
            "token_type": token.token_type,
            "expires_at": token.expires_at.isoformat() if token.expires_at else None,
            "scopes": list(token.scopes),
        }
    )
    response.headers["Cache-Control"] = "no-store"
    return response
