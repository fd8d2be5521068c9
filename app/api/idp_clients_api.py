"""``/api/account-manager/oidc-clients``: the OpenID Provider's relying parties, for the CMS or a deploy script.

Reading needs ``clients:read``; registering, changing, rotating the secret and deleting ``clients:write``. The rules
are :mod:`app.idp.clients` (the console's, the CLI's and ``ami-auth oidc clients apply``'s): a bad value is
``validation_failed`` on its field. A client secret is never sent to the server; one is made by the server and
handed out once, in the answer to the call that made it (creating a ``client_secret_basic``/``post`` client,
switching a client to one of them, or rotating) — an audited hand-out (``oidc.client.create``,
``oidc.client.update``, ``oidc.client.secret_rotate``). AMI Auth keeps only its hash.
"""

from __future__ import annotations

from typing import Any, Final

from werkzeug.wrappers import Response

from app.api import bodies
from app.api.registry import DATETIME, JSONSchema, component, document, nullable
from app.api.security import api_audit_ctx, api_auth, api_blueprint, json_response, principal
from app.errors import AppError
from app.extensions import db_session, get_settings
from app.idp import clients
from app.idp.keys import ALGORITHMS
from app.models import OidcClient

bp = api_blueprint("api_oidc_clients", __name__)

TAGS: Final = ("oidc-clients",)
_TEXT: Final = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"
_URI: Final[JSONSchema] = {
    "type": "string",
    "maxLength": clients.URI_MAX,
    "pattern": r"^https?://[^\s#]+$",
    "description": "An absolute http(s) address without #fragment (http only on 127.0.0.1/localhost in production).",
}
_URIS: Final[JSONSchema] = {"type": "array", "maxItems": clients.LIST_MAX, "items": _URI}


def _ttl(bounds: tuple[int, int], description: str) -> JSONSchema:
    return {"type": "integer", "minimum": bounds[0], "maximum": bounds[1], "description": description}


SETTINGS_PROPERTIES: Final[dict[str, JSONSchema]] = {
    "name": {
        "type": "string",
        "minLength": 1,
        "maxLength": clients.NAME_MAX,
        "pattern": _TEXT,
        "description": "What users see on the consent page and on their account page.",
    },
    "client_type": {"type": "string", "enum": list(clients.CLIENT_TYPES), "default": "confidential"},
    "auth_method": {
        "type": "string",
        "enum": [*clients.CONFIDENTIAL_METHODS, "none"],
        "description": "How it authenticates at the token endpoint; `none` for public clients (and only them). "
        "`private_key_jwt` needs `jwks_uri`.",
    },
    "redirect_uris": {**_URIS, "description": "Exact-match redirect URIs (needed for authorization_code)."},
    "post_logout_redirect_uris": {**_URIS, "description": "Where RP-initiated logout may send the browser."},
    "backchannel_logout_uri": nullable({**_URI, "description": "Receives OIDC Back-Channel Logout tokens."}),
    "jwks_uri": nullable({**_URI, "description": "The client's public keys (for private_key_jwt)."}),
    "grant_types": {
        "type": "array",
        "maxItems": len(clients.GRANT_TYPES),
        "items": {"type": "string", "enum": list(clients.GRANT_TYPES)},
        "description": "refresh_token needs authorization_code; client_credentials is for confidential clients.",
    },
    "scopes": {
        "type": "array",
        "maxItems": clients.LIST_MAX,
        "items": {"type": "string", "pattern": r"^[\x21\x23-\x5b\x5d-\x7e]{1,100}$"},
        "description": "Scopes it may ask for; include openid for apps that sign people in.",
    },
    "audiences": {
        "type": "array",
        "maxItems": clients.LIST_MAX,
        "items": {"type": "string", "maxLength": clients.AUDIENCE_MAX, "pattern": r"^\S+$"},
        "description": "The `aud` of its access tokens (the APIs they are for); empty: the client id.",
    },
    "require_pkce": {"type": "boolean", "description": "PKCE S256 (always required for public clients)."},
    "first_party": {"type": "boolean", "description": "A platform app: users are not asked for consent."},
    "id_token_alg": {"type": "string", "enum": list(ALGORITHMS)},
    "access_token_ttl": _ttl(clients.ACCESS_TTL, "Seconds."),
    "refresh_token_ttl": _ttl(clients.REFRESH_TTL, "Seconds."),
    "id_token_ttl": _ttl(clients.ID_TTL, "Seconds."),
    "enabled": {"type": "boolean"},
}

OIDC_CLIENT = component(
    "OidcClient",
    {
        "type": "object",
        "required": ["client_id", *clients.FIELDS, "has_secret", "created_at", "updated_at"],
        "additionalProperties": False,
        "properties": {
            "client_id": {"type": "string"},
            **SETTINGS_PROPERTIES,
            "has_secret": {"type": "boolean", "description": "Whether a secret is stored (only its hash is)."},
            "created_at": DATETIME,
            "updated_at": DATETIME,
        },
    },
)
OIDC_CLIENT_WITH_SECRET = component(
    "OidcClientWithSecret",
    {
        "type": "object",
        "required": ["client", "client_secret"],
        "additionalProperties": False,
        "properties": {
            "client": OIDC_CLIENT,
            "client_secret": nullable(
                {"type": "string", "description": "Shown once: store it now (AMI Auth keeps only its hash)."}
            ),
        },
    },
)
OIDC_CLIENT_LIST = component(
    "OidcClientList",
    {
        "type": "object",
        "required": ["clients"],
        "additionalProperties": False,
        "properties": {"clients": {"type": "array", "items": OIDC_CLIENT}},
    },
)
CREATE_REQUEST = component(
    "OidcClientCreate",
    {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": SETTINGS_PROPERTIES,
    },
)
UPDATE_REQUEST = component(
    "OidcClientUpdate",
    {"type": "object", "additionalProperties": False, "properties": SETTINGS_PROPERTIES},
)
CLIENT_ID_PARAM: Final = {
    "client_id": ({"type": "string", "pattern": r"^[A-Za-z0-9_-]{1,64}$"}, "The client's client_id."),
}
_RULES: Final = (
    " Settings are checked together as the console checks them; a refused one is `validation_failed` on its field "
    "(e.g. `jwks_uri` when `private_key_jwt` has none, `grant_types` for client_credentials on a public client)."
)


def client_json(row: OidcClient) -> dict[str, Any]:
    settings = clients.settings_of(row)
    body: dict[str, Any] = {"client_id": row.client_id}
    for name in clients.FIELDS:
        value = getattr(settings, name)
        body[name] = list(value) if isinstance(value, tuple) else value
    body["has_secret"] = row.secret_hash is not None
    body["created_at"] = row.created_at.isoformat()
    body["updated_at"] = row.updated_at.isoformat()
    return body


def _values(data: dict[str, Any]) -> dict[str, Any]:
    """The body in the service's names; text fields refuse control characters here (the service trims)."""
    bodies.check_keys(data, allowed=clients.FIELDS)
    for key in ("name", "backchannel_logout_uri", "jwks_uri"):
        if isinstance(data.get(key), str):
            bodies.plain_text(data[key], key, max_length=clients.URI_MAX)
    for key in ("redirect_uris", "post_logout_redirect_uris", "scopes", "audiences", "grant_types"):
        value = data.get(key)
        if key in data and not isinstance(value, list):
            raise AppError("validation_failed", fields={key: "Use a list of text values."})
        for item in value or ():
            if not isinstance(item, str):
                raise AppError("validation_failed", fields={key: "Use a list of text values."})
            bodies.plain_text(item, key, max_length=clients.URI_MAX)
            if not item.strip() or item != item.strip() or " " in item:
                raise AppError("validation_failed", fields={key: f"{item!r}: remove spaces."})
    for key in ("require_pkce", "first_party", "enabled"):
        if key in data and not isinstance(data[key], bool):
            raise AppError("validation_failed", fields={key: "Use true or false."})
    for key in ("access_token_ttl", "refresh_token_ttl", "id_token_ttl"):
        value = data.get(key)
        if isinstance(value, float) and value.is_integer():
            data[key] = int(value)
        elif key in data and (isinstance(value, bool) or not isinstance(value, int)):
            raise AppError("validation_failed", fields={key: "Use a whole number of seconds."})
    return data


def _find(client_id: str) -> OidcClient:
    row = clients.find_client(db_session(), client_id)
    if row is None:
        raise AppError("not_found", f"There is no client {client_id!r}.", "List them to get client ids.")
    return row


def _with_secret(saved: clients.Saved) -> dict[str, Any]:
    return {"client": client_json(saved.client), "client_secret": saved.secret}


@bp.get("/account-manager/oidc-clients")
@api_auth("clients:read")
@document(
    operation_id="listOidcClients",
    summary="List OpenID clients",
    description="Every app registered with AMI Auth's OpenID Provider, by name; never a secret. Scope `clients:read`.",
    response=OIDC_CLIENT_LIST,
    tags=TAGS,
)
def list_oidc_clients() -> Response:
    return json_response({"clients": [client_json(row) for row in clients.list_clients(db_session())]})


@bp.post("/account-manager/oidc-clients")
@api_auth("clients:write")
@document(
    operation_id="createOidcClient",
    summary="Register an OpenID client",
    description="Registers an app. A `client_secret_basic`/`client_secret_post` client's secret is in this answer "
    "only (an audited hand-out; only its hash is kept); other clients get `client_secret: null`. Scope "
    "`clients:write`." + _RULES,
    status=201,
    response=OIDC_CLIENT_WITH_SECRET,
    response_description="Registered; `Location` is its URL.",
    request=CREATE_REQUEST,
    errors=(422,),
    tags=TAGS,
    idempotent=True,
)
def create_oidc_client() -> Response:
    values = _values(bodies.json_body())
    db = db_session()
    caller = principal()
    try:
        saved = clients.create_client(
            db,
            api_audit_ctx(),
            values,
            production=get_settings().is_production,
            created_by=caller.user.id if caller.user is not None else None,
        )
        body = _with_secret(saved)
        db.commit()
    except AppError:
        db.rollback()
        raise
    return json_response(body, 201, location=f"/api/account-manager/oidc-clients/{saved.client.client_id}")


@bp.get("/account-manager/oidc-clients/<client_id>")
@api_auth("clients:read")
@document(
    operation_id="getOidcClient",
    summary="One OpenID client",
    description="Its settings; whether a secret is stored, never the secret. Scope `clients:read`.",
    response=OIDC_CLIENT,
    path=CLIENT_ID_PARAM,
    errors=(404,),
    tags=TAGS,
)
def get_oidc_client(client_id: str) -> Response:
    return json_response(client_json(_find(client_id)))


@bp.patch("/account-manager/oidc-clients/<client_id>")
@api_auth("clients:write")
@document(
    operation_id="updateOidcClient",
    summary="Change an OpenID client",
    description="Changes the settings sent (the others keep their value). A switch to a secret method makes a secret, "
    "handed out once in `client_secret`; otherwise it is null. Scope `clients:write`." + _RULES,
    response=OIDC_CLIENT_WITH_SECRET,
    request=UPDATE_REQUEST,
    path=CLIENT_ID_PARAM,
    errors=(404, 422),
    tags=TAGS,
)
def update_oidc_client(client_id: str) -> Response:
    values = _values(bodies.json_body())
    db = db_session()
    row = _find(client_id)
    try:
        saved = clients.update_client(db, api_audit_ctx(), row, values, production=get_settings().is_production)
        body = _with_secret(saved)
        db.commit()
    except AppError:
        db.rollback()
        raise
    return json_response(body)


@bp.post("/account-manager/oidc-clients/<client_id>/secret")
@api_auth("clients:write")
@document(
    operation_id="rotateOidcClientSecret",
    summary="Rotate an OpenID client's secret",
    description="Makes a new secret (the old one stops working at once) and hands it out in this answer only "
    "(audited: `oidc.client.secret_rotate`). `validation_failed` on `auth_method` for a client without a secret "
    "method. Scope `clients:write`.",
    response=OIDC_CLIENT_WITH_SECRET,
    path=CLIENT_ID_PARAM,
    errors=(404, 422),
    tags=TAGS,
)
def rotate_oidc_client_secret(client_id: str) -> Response:
    db = db_session()
    row = _find(client_id)
    try:
        body = _with_secret(clients.rotate_secret(db, api_audit_ctx(), row))
        db.commit()
    except AppError:
        db.rollback()
        raise
    return json_response(body)


@bp.delete("/account-manager/oidc-clients/<client_id>")
@api_auth("clients:write")
@document(
    operation_id="deleteOidcClient",
    summary="Delete an OpenID client",
    description="Deletes the app with its codes, tokens and users' consents: its refresh tokens stop working at "
    "once. Scope `clients:write`.",
    status=204,
    response=None,
    response_description="Deleted.",
    path=CLIENT_ID_PARAM,
    errors=(404,),
    tags=TAGS,
)
def delete_oidc_client(client_id: str) -> Response:
    db = db_session()
    row = _find(client_id)
    clients.delete_client(db, api_audit_ctx(), row)
    db.commit()
    return Response(status=204)
