"""``GET /api/account-manager/accounts/<id>/headers`` — the headers (and, for a generic API key sent as a
query parameter, the parameters) a trusted server should add to a request made with this account.

This is the one JSON response that contains a secret, by design. Every call is audited before the secret
leaves (``account.headers.disclosed``: the service token as the actor, from where, the path, which header
names — never values), so a failed audit write means no disclosure; that event is the token's use record
too (no separate ``service_token.use``), so a call costs one audit write and one commit. ``last_used_at``
(account and token) moves at most once a minute. Access: a service token with
the scope ``accounts:headers`` (the CMS server) — never a browser session: a credential has no business
in a browser, and an admin's cookie riding a cross-site request must not be able to fetch one.
"""

from __future__ import annotations

from werkzeug.wrappers import Response

from app import audit
from app.api.registry import component, document
from app.api.security import api_audit_ctx, api_auth, api_blueprint, json_response
from app.api.token_api import check_limits, oauth_headers
from app.connectors import accounts
from app.connectors.bearer import OAUTH_MODES
from app.connectors.headers import disclose
from app.errors import AppError
from app.extensions import db_session, get_cipher
from app.models import ConnectedAccount
from app.models.base import ID_MAX
from app.providers.registry import entry as catalog_entry

bp = api_blueprint("api_accounts", __name__)

_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
ACCOUNT_HEADERS = component(
    "AccountHeaders",
    {
        "type": "object",
        "required": ["headers", "query"],
        "additionalProperties": False,
        "properties": {
            "headers": {**_STRINGS, "description": "Header name → value to send (contains the credential)."},
            "query": {
                **_STRINGS,
                "description": "Query parameters to add (only a generic API key with auth_type `query`).",
            },
        },
    },
)
ACCOUNT_ID_PARAM = {
    "account_id": ({"type": "integer", "minimum": 1, "maximum": ID_MAX}, "The connected account's id."),
}


@bp.get("/account-manager/accounts/<int:account_id>/headers")
@api_auth("accounts:headers", cookies=False, audit_use=False)
@document(
    operation_id="getAccountHeaders",
    summary="Ready-to-send request headers for an API-key or OAuth account",
    description=(
        "The headers (and query parameters) to add to a request made with this connected account, rendered "
        "from its provider's catalog entry: e.g. `Authorization: Bearer …` plus `OpenAI-Organization` for "
        "OpenAI, `x-api-key` + `anthropic-version` for Anthropic. **The response contains the credential**: "
        "every call is audited (`account.headers.disclosed`) and answered `Cache-Control: no-store`. "
        "Service tokens with the scope `accounts:headers` only: a session cookie, even an admin's, is 403. "
        "OAuth accounts (Google, GitHub, Entra ID, OpenID) get their current access token as a bearer header, "
        "refreshed first when it expires within a minute (409 `consent_required` when the account must be "
        "reconnected). 409 `conflict` when the account cannot be used, the same answer as refresh and the "
        "dialogs give for the same cause: its provider config is disabled, no secret is stored yet, or it is an "
        "SMTP account. Prefer the proxy (`…/proxy/{path}`), which never discloses the credential."
    ),
    response=ACCOUNT_HEADERS,
    path=ACCOUNT_ID_PARAM,
    errors=(404, 409),
    tags=("accounts",),
)
def account_headers(account_id: int) -> Response:
    db = db_session()
    try:
        account = db.get(ConnectedAccount, account_id)
        provider = catalog_entry(account.provider_config.provider_type) if account is not None else None
        if account is not None and provider is not None and provider.auth_mode in OAUTH_MODES:
            check_limits(account, provider)
            result = oauth_headers(account, provider)
            audit.record(
                db, api_audit_ctx(), "account.headers.disclosed", target=f"connected_account:{account_id}",
                details={"via": "api", **result.names()},
            )  # fmt: skip
        else:
            if account is not None and provider is not None:
                check_limits(account, provider)
            result = disclose(
                db, get_cipher(), account_id, ctx=api_audit_ctx(), usable_modes=accounts.CONNECTABLE_MODES
            )
        db.commit()
    except AppError as exc:
        # The token's use is recorded even when nothing is disclosed (audit_use=False leaves it to us).
        db.rollback()
        audit.record(
            db,
            api_audit_ctx(),
            "account.headers.refused",
            target=f"connected_account:{account_id}",
            outcome="failure",
            details={"code": exc.code},
        )
        db.commit()
        raise
    return json_response({"headers": dict(result.headers), "query": dict(result.query)})
