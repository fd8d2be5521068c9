"""``POST /api/account-manager/dialogs``: a short-lived, single-use URL of a secure dialog for the CMS.

The CMS sends an admin there (iframe or full page) to type a secret it must never see: a new account's
API key (``add_account``), a replacement key (``replace_secret``) or a provider config's secret fields
(``edit_provider_config``). After "Save" or "Cancel" the dialog sends the browser back to ``return_to``
with ``?status=saved|cancelled&account=<id>`` (``provider_config=<id>`` for a config). The rules of the
link are in ``app.api.dialog_links``; the pages in ``app.web.cms_dialogs``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from sqlalchemy.orm import Session
from werkzeug.wrappers import Response

from app.api import bodies, dialog_links
from app.api.registry import DATETIME, JSONSchema, component, document, settings_component
from app.api.security import (
    Principal,
    api_audit_ctx,
    api_auth,
    api_blueprint,
    json_response,
    principal,
    require_scope,
)
from app.errors import AppError
from app.extensions import db_session, get_settings
from app.models.base import ID_MAX
from app.models.dialogs import DialogKind

bp = api_blueprint("api_dialogs", __name__)

RETURN_TO = settings_component("DialogReturnTo", dialog_links.return_to_schema)
_ID: Final[JSONSchema] = {"type": "integer", "minimum": 1, "maximum": ID_MAX}
_DESCRIPTIONS: Final[dict[DialogKind, str]] = {
    "add_account": "Add an account to an enabled API-key or SMTP provider config: its fields and its secret. "
    "Scope `accounts:write`.",
    "replace_secret": "Replace the secret of an API-key or SMTP account (verified before it is stored; the old "
    "value stays recoverable for the grace period). Scope `accounts:write`.",
    "edit_provider_config": "Set or replace the secret fields of a provider config (e.g. an OAuth client "
    "secret). Scope `providers:write`.",
}


def _variant(kind: DialogKind) -> JSONSchema:
    target = dialog_links.TARGET_FIELD[kind]
    return {
        "type": "object",
        "title": kind,
        "description": _DESCRIPTIONS[kind],
        "required": ["kind", target, "return_to"],
        "additionalProperties": False,
        "properties": {"kind": {"const": kind}, target: _ID, "return_to": RETURN_TO},
    }


DIALOG_REQUEST = component("DialogRequest", {"oneOf": [_variant(kind) for kind in dialog_links.KINDS]})
DIALOG = component(
    "Dialog",
    {
        "type": "object",
        "required": ["url", "expires_at"],
        "additionalProperties": False,
        "properties": {
            "url": {
                "type": "string",
                "format": "uri",
                "description": "Open it once, in an iframe or as a page, before expires_at. Treat it like a "
                "password: whoever opens it first (with an admin session) owns it.",
            },
            "expires_at": DATETIME,
        },
    },
)


def _kind(data: dict[str, object]) -> DialogKind:
    value = data.get("kind")
    for kind in dialog_links.KINDS:
        if value == kind:
            return kind
    raise AppError("validation_failed", fields={"kind": "Use one of: " + ", ".join(dialog_links.KINDS) + "."})


def _link_answer(issue: Callable[[Session, int | None], dialog_links.IssuedDialog], caller: Principal) -> Response:
    """Issue a one-time link (committed, or rolled back on a refusal) and answer 201 with its URL and expiry."""
    db = db_session()
    try:
        issued = issue(db, caller.token.id if caller.token is not None else None)
        expires_at = issued.record.expires_at
        db.commit()
    except AppError:
        db.rollback()
        raise
    return json_response({"url": issued.url, "expires_at": expires_at.isoformat()}, 201, location=issued.url)


@bp.post("/account-manager/dialogs")
@api_auth(any_of=tuple(sorted(set(dialog_links.KIND_SCOPE.values()))))
@document(
    operation_id="createDialog",
    summary="A single-use URL of a secure dialog",
    description="Secrets are typed only in AMI Auth's own pages. This returns a URL of one such dialog, valid for "
    "10 minutes and for one use: the first admin session that opens it owns it, and Save or Cancel spends it "
    "(a reused or expired URL shows an error page, never a redirect). Opening it needs an admin signed in to "
    "AMI Auth. After Save or Cancel the browser goes back (top-level, out of any iframe) to `return_to` with "
    "`status=saved|cancelled` and `account=<id>` (`provider_config=<id>` for edit_provider_config). "
    "`return_to` must start with one of AMI_AUTH_CMS_ORIGINS exactly, else 422 `validation_failed` on "
    "`return_to`. Scopes: `accounts:write` for add_account and replace_secret, `providers:write` for "
    "edit_provider_config. 404 when the config or account does not exist; 409 `conflict` when it cannot take "
    "this dialog (disabled config, OAuth account or config type, no secret fields).",
    status=201,
    response=DIALOG,
    response_description="Created: send the admin to `url` (also in `Location`).",
    request=DIALOG_REQUEST,
    errors=(404, 409, 422),
    tags=("dialogs",),
)
def create_dialog() -> Response:
    # No Idempotency-Key here: a replay would have to keep the link (a bearer credential, stored only as a hash)
    # in clear; a retried request just gets another link, and an unused one expires in 10 minutes.
    # Scope before body: the guard let in only callers holding one of the dialog scopes; the kind picks
    # which one, and nothing else of the body is looked at before it is checked.
    data = bodies.json_body()
    kind = _kind(data)
    require_scope(dialog_links.KIND_SCOPE[kind], kind=kind)
    bodies.check_keys(
        data, allowed=("kind", "provider_config_id", "account_id", "return_to"), required=("kind", "return_to")
    )
    caller = principal()
    target_field = dialog_links.TARGET_FIELD[kind]
    other = {"provider_config_id", "account_id"} - {target_field}
    errors = {name: f"Not used by a {kind} dialog." for name in other if name in data}
    if target_field not in data:
        errors[target_field] = "This field is required."
    if errors:
        raise AppError("validation_failed", fields=errors)
    target_id = bodies.body_id(data, target_field)
    settings = get_settings()
    return_to = dialog_links.check_return_to(settings, data["return_to"])
    return _link_answer(
        lambda db, token_id: dialog_links.issue(
            db,
            settings,
            api_audit_ctx(),
            kind=kind,
            target_id=target_id,
            return_to=return_to,
            service_token_id=token_id,
        ),
        caller,
    )


CONNECT_REQUEST = component(
    "ConnectLinkRequest",
    {
        "type": "object",
        "required": ["provider_config_id", "user_id", "return_to"],
        "additionalProperties": False,
        "properties": {
            "provider_config_id": {
                **_ID,
                "description": "An enabled API-key, SMTP or OAuth provider config whose `end_users_connect` is true.",
            },
            "user_id": {**_ID, "description": "The end user who connects their own account (and will own it)."},
            "return_to": RETURN_TO,
        },
    },
)


@bp.post("/account-manager/connect-links")
@api_auth("accounts:write")
@document(
    operation_id="createConnectLink",
    summary="A single-use URL where an end user connects their own account",
    description="For a signed-in end user of the CMS (not only admins): the URL opens AMI Auth's secure page "
    "where that user — and only that user's own AMI Auth session (the page offers sign-in; another user's session "
    "is refused) — types their key (API-key and SMTP configs; tested with the provider first) or goes through the "
    "provider's consent screen (OAuth configs: Google, GitHub, Entra ID, OpenID Connect; the same authorization "
    "as Account → Connections, which must finish in the session that opened the link). The key or token set is "
    "stored encrypted and the new account belongs to that user (webhook `account.connected`). Then the browser "
    "goes back to `return_to` with `status=saved&account=<id>`, `status=cancelled`, or — OAuth only, when the "
    "user denied consent or the provider failed — `status=failed&error=<code>` (e.g. `consent_required`), nothing "
    "stored. Valid for 10 minutes (the provider's answer included) and one use, like a dialog URL. The provider "
    "config must be enabled and have `end_users_connect: true` (409 `conflict` on `provider_config_id` "
    "otherwise); 404 for an unknown config or user, 409 for a disabled user. Audited (`dialog.issue` with the "
    "user). Scope `accounts:write`.",
    status=201,
    response=DIALOG,
    response_description="Created: send the user to `url` (also in `Location`).",
    request=CONNECT_REQUEST,
    errors=(404, 409, 422),
    tags=("dialogs",),
)
def create_connect_link() -> Response:
    # No Idempotency-Key, for the reason given at create_dialog.
    data = bodies.json_object(
        allowed=("provider_config_id", "user_id", "return_to"), required=("provider_config_id", "user_id", "return_to")
    )
    config_id = bodies.body_id(data, "provider_config_id")
    user_id = bodies.body_id(data, "user_id")
    settings = get_settings()
    return_to = dialog_links.check_return_to(settings, data["return_to"])
    caller = principal()
    return _link_answer(
        lambda db, token_id: dialog_links.issue_connect(
            db,
            settings,
            api_audit_ctx(),
            provider_config_id=config_id,
            user_id=user_id,
            return_to=return_to,
            service_token_id=token_id,
        ),
        caller,
    )
