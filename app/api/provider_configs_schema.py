"""The ``/api/account-manager/provider-configs`` resources' JSON shapes, built per provider type from the catalog.

Apart from :mod:`app.api.provider_configs_api` (the views) so that each stays readable; the views import from here.
"""

from __future__ import annotations

from typing import Final

from app.api import provider_types
from app.api import schema as field_schemas
from app.api.registry import DATETIME, JSONSchema, component, nullable, settings_component
from app.models.base import ID_MAX
from app.providers import configs
from app.providers.entries import ProviderEntry
from app.settings import Settings

TAGS: Final = ("provider-configs",)
SECRET_HINT: Final = (
    "Secret fields are never sent through the API: set them in a secure dialog "
    "(POST /api/account-manager/dialogs with kind edit_provider_config) or with `ami-auth providers apply`."
)
SECRET_FIELD: Final = "This is a secret field; it cannot be sent through the API."

_NAME: Final[JSONSchema] = {
    "type": "string",
    "minLength": 1,
    "maxLength": configs.NAME_MAX,
    # Printable text with something to show (the name is trimmed; control characters are refused at the door).
    "pattern": r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$",
    "description": "Unique regardless of case; how admins and the CLI refer to the config.",
}
_CONFIG_DESCRIPTION: Final = (
    "Non-secret field values, keyed by field name, as described by the provider type's `config` schema in GET "
    "/api/account-manager/providers/schema (secret fields are refused here). Values are JSON as meant: numbers, "
    "true/false and lists, never text standing for them. A field left out takes its catalog default; null "
    "clears an optional field."
)


def _config_schema(provider: ProviderEntry) -> JSONSchema:
    """A stored config of one type, as the API returns it."""
    return {
        "type": "object",
        "required": [
            "id",
            "provider_type",
            "auth_mode",
            "name",
            "enabled",
            "config",
            "secrets",
            "missing",
            "account_count",
            "created_at",
            "updated_at",
        ],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "integer"},
            "provider_type": {"const": provider.id},
            "auth_mode": {"const": provider.auth_mode.value},
            "name": {"type": "string"},
            "enabled": {"type": "boolean"},
            "config": {
                **field_schemas.stored_schema(provider, "config"),
                "description": "The stored non-secret values.",
            },
            "secrets": provider_types.secrets_schema(provider),
            "missing": {
                "type": "object",
                "description": "What keeps the config from being enabled, by field (empty when complete).",
                "additionalProperties": {"type": "string"},
            },
            "account_count": {"type": "integer", "minimum": 0},
            "created_at": DATETIME,
            "updated_at": DATETIME,
        },
    }


def _create_schema(provider: ProviderEntry) -> JSONSchema:
    """A new config of one type: its name, and the type's non-secret values as the server checks them."""
    config = {**field_schemas.body_schema(provider, "config"), "description": _CONFIG_DESCRIPTION}
    required = ["provider_type", "name"]
    if config["required"] or any("required" in rule.get("then", {}) for rule in config.get("allOf", [])):
        required.append("config")
    schema: JSONSchema = {
        "type": "object",
        "title": f"A new {provider.display_name} config",
        "required": required,
        "additionalProperties": False,
        "properties": {
            "provider_type": {"const": provider.id},
            "name": _NAME,
            "enabled": {
                "type": "boolean",
                "default": False,
                "description": "true enables it at once, if it is complete: not while a required secret is due "
                "(secrets are set in a dialog afterwards).",
            },
            "config": config,
        },
    }
    rule = field_schemas.enable_rule(provider)
    if rule is not None:
        schema.update(rule)
    return schema


def _patch_schema(provider: ProviderEntry) -> JSONSchema:
    """The values a PATCH may change for one type (merged into the stored ones, then checked as a whole)."""
    schema = field_schemas.stored_schema(provider, "config")
    schema["title"] = f"{provider.display_name} config values to change"
    return schema


PROVIDER_CONFIG = provider_types.union(
    "ProviderConfig",
    provider_types.per_type("ProviderConfig", _config_schema),
    "provider_type",
    "A provider config; `config` and `secrets` depend on `provider_type`.",
)
PROVIDER_CONFIG_LIST = component(
    "ProviderConfigList",
    {
        "type": "object",
        "required": ["provider_configs"],
        "additionalProperties": False,
        "properties": {"provider_configs": {"type": "array", "items": PROVIDER_CONFIG}},
    },
)
CREATE_REQUEST = provider_types.union(
    "ProviderConfigCreate",
    provider_types.per_type("ProviderConfigCreate", _create_schema),
    "provider_type",
    "A new provider config: its type, a name and the type's non-secret values.",
)
_PATCHES: Final = provider_types.per_type("ProviderConfigPatch", _patch_schema)


def _update_request(settings: Settings) -> JSONSchema:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "name": _NAME,
            "enabled": {"type": "boolean"},
            "config": {
                "anyOf": list(_PATCHES.refs(settings).values()),
                "description": "The fields to change (merged into the stored values; the values of the config's "
                "own type); null clears an optional field. Fields left out keep their stored value.",
            },
        },
    }


UPDATE_REQUEST = settings_component("ProviderConfigUpdate", _update_request)
CONFIG_ID_PARAM: Final = {
    "config_id": ({"type": "integer", "minimum": 1, "maximum": ID_MAX}, "The provider config's id."),
}
DESCRIPTION_COMMON: Final = (
    " Secret fields are refused (`validation_failed` on `config.<field>`): " + SECRET_HINT + " Problems with a "
    "value are reported on `config.<field>` with the same messages the console shows."
)


CONFIG_TEST = component(
    "ProviderConfigTest",
    {
        "type": "object",
        "required": ["status", "message", "code", "field", "learned"],
        "additionalProperties": False,
        "properties": {
            "status": {
                "type": "string",
                "enum": ["ok", "failed", "unavailable"],
                "description": "`unavailable`: nothing can be tested on this config alone (API-key types, GitHub).",
            },
            "message": {"type": "string"},
            "code": nullable({"type": "string", "description": "The error code when `failed`."}),
            "field": nullable({"type": "string", "description": "The config field to blame, when one is."}),
            "learned": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "What the check found (OIDC: issuer, endpoints, signing keys; SMTP: the server).",
            },
        },
    },
)
