"""``/api/account-manager/providers/…``: what the CMS needs to know about provider types.

The schema endpoint publishes, per provider type, the JSON Schemas of its config and account fields —
generated from the same catalog entries the admin forms are built from (``app/api/schema.py``).
"""

from __future__ import annotations

from werkzeug.wrappers import Response

from app.api.registry import component, document
from app.api.schema import catalog_schema
from app.api.security import api_auth, api_blueprint, json_response
from app.providers.registry import get_catalog

bp = api_blueprint("api_providers", __name__)

_JSON_SCHEMA = {
    "type": "object",
    "description": "A JSON Schema (draft 2020-12) object schema; secret fields carry writeOnly: true.",
}
PROVIDER_TYPE = component(
    "ProviderType",
    {
        "type": "object",
        "required": ["id", "display_name", "auth_mode", "description", "docs_url", "config", "account"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "description": "The catalog id (AuthProviderType)."},
            "display_name": {"type": "string"},
            "auth_mode": {"type": "string", "enum": ["password", "oauth2", "oidc", "api_key", "smtp"]},
            "description": {"type": "string"},
            "docs_url": {"type": "string", "format": "uri"},
            "admin_warnings": {"type": "array", "items": {"type": "string"}},
            "rotation_days": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]},
            "revoke": {
                "type": "object",
                "required": ["supported", "hint"],
                "additionalProperties": False,
                "properties": {"supported": {"type": "boolean"}, "hint": {"type": "string"}},
            },
            "refresh": {"type": "string", "enum": ["none", "standard"]},
            "config": {**_JSON_SCHEMA, "title": "Provider-config fields (set once by an admin)"},
            "account": {**_JSON_SCHEMA, "title": "Connected-account fields"},
        },
    },
)
PROVIDER_SCHEMAS = component(
    "ProviderSchemas",
    {
        "type": "object",
        "required": ["providers"],
        "additionalProperties": False,
        "properties": {"providers": {"type": "array", "items": PROVIDER_TYPE}},
    },
)


@bp.get("/account-manager/providers/schema")
@api_auth("providers:write")
@document(
    summary="Field schemas of every provider type",
    description=(
        "One entry per provider type, in catalog order, with a JSON Schema for its provider-config fields "
        "and one for its connected-account fields. Secret fields are `writeOnly` (no value is ever "
        "returned); `x-order`, `x-visible-when` (a hidden field is ignored), `x-admin-only`, `x-advanced` and "
        "`x-enum-labels` carry what a form needs. `required` lists what a new submission must contain; on "
        "update a secret field may be left out to keep the stored value. Scope `providers:write` "
        "(admins with the session cookie)."
    ),
    response=PROVIDER_SCHEMAS,
    tags=("providers",),
)
def providers_schema() -> Response:
    return json_response(catalog_schema(get_catalog()))
