"""``/api/account-manager/providers/…``: what the CMS needs to know about provider types.

The schema endpoint publishes, per provider type, the JSON Schemas of its config and account fields —
generated from the same catalog entries the admin forms are built from (``app/api/schema.py``).
"""

from __future__ import annotations

from werkzeug.wrappers import Response

from app.api import provider_types
from app.api.registry import component, document
from app.api.schema import ANNOTATIONS, catalog_schema
from app.api.security import api_auth, api_blueprint, json_response
from app.providers.registry import get_catalog

bp = api_blueprint("api_providers", __name__)

PROVIDER_TYPE = provider_types.union(
    "ProviderType",
    provider_types.per_type("ProviderType", provider_types.provider_type_schema),
    "id",
    "A provider type of the catalog, with the JSON Schemas of its config and account fields.",
)
PROVIDER_SCHEMAS = component(
    "ProviderSchemas",
    {
        "type": "object",
        "required": ["annotation_keywords", "providers"],
        "additionalProperties": False,
        "properties": {
            "annotation_keywords": {
                "type": "array",
                "items": {"type": "string", "enum": list(ANNOTATIONS)},
                "description": "The `x-` keywords the schemas carry: annotations that never change validity. Give "
                "them to your validator as known keywords (ajv: `new Ajv({keywords: annotation_keywords})`).",
            },
            "providers": {"type": "array", "items": PROVIDER_TYPE},
        },
    },
)


@bp.get("/account-manager/providers/schema")
@api_auth("providers:read")
@document(
    operation_id="getProviderSchemas",
    summary="Field schemas of every provider type",
    description=(
        "One entry per provider type, in catalog order, with a JSON Schema for its provider-config fields "
        "and one for its connected-account fields. Secret fields are `writeOnly` (no value is ever "
        "returned); `x-order`, `x-visible-when` (a hidden field is ignored), `x-admin-only`, `x-advanced` and "
        "`x-enum-labels` carry what a form needs. `required` lists what a new submission must contain; on "
        "update a secret field may be left out to keep the stored value. Scope `providers:read` "
        "(admins with the session cookie)."
    ),
    response=PROVIDER_SCHEMAS,
    tags=("providers",),
)
def providers_schema() -> Response:
    return json_response(catalog_schema(get_catalog()))
