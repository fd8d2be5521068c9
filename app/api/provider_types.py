"""Per provider type OpenAPI components, generated from the catalog: exact types for what differs by type.

A provider config's ``config`` values, a connected account's ``identifiers`` and ``provider_data``, and a
provider type's published field schemas are different objects for each type. The OpenAPI document gives
each type its own component (``ProviderConfigOpenai``, ``AccountSnapshotGenericApiKey``, …) and the shared
name a ``oneOf`` of them with a ``discriminator`` on the type field — so a generated client narrows on
``provider_type === "openai"`` and then knows ``config.rotation_days`` is a number. Nothing here is written per
provider: every variant is built from the type's catalog entry when the document is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from app.api import schema as field_schemas
from app.api.registry import DATETIME, JSONSchema, component, nullable, settings_component, settings_component_group
from app.providers.entries import ProviderEntry
from app.providers.registry import catalog_for
from app.providers.types import AuthMode
from app.settings import Settings

AUTH_MODES: Final = [m.value for m in AuthMode]
OAUTH_MODES: Final = frozenset({AuthMode.OAUTH2, AuthMode.OIDC})
_STR: Final[JSONSchema] = {"type": "string"}


@dataclass(frozen=True)
class PerType:
    """A family of per-type components (``<prefix><TypeName>``), one per type of each app's catalog."""

    prefix: str

    def refs(self, settings: Settings) -> dict[str, JSONSchema]:
        """The ``$ref`` of each type's component, by type id, for this app's catalog."""
        return {
            entry.id: {"$ref": f"#/components/schemas/{self.prefix}{field_schemas.type_name(entry.id)}"}
            for entry in catalog_for(settings)
        }


def per_type(prefix: str, build: Callable[[ProviderEntry], JSONSchema]) -> PerType:
    """One component per provider type, built from its entry with each app's document: the types are the
    catalog's, which the settings may extend (``AMI_AUTH_CATALOG_DIR``), so the family is not fixed at import."""

    def family(settings: Settings) -> dict[str, JSONSchema]:
        return {prefix + field_schemas.type_name(entry.id): build(entry) for entry in catalog_for(settings)}

    settings_component_group(prefix, family)
    return PerType(prefix)


def union(name: str, family: PerType, discriminator: str, description: str = "") -> JSONSchema:
    """A ``oneOf`` of per-type variants that a client tells apart by ``discriminator`` (OpenAPI 3.1 §4.8.25)."""

    def build(settings: Settings) -> JSONSchema:
        refs = family.refs(settings)
        body: JSONSchema = {
            "oneOf": list(refs.values()),
            "discriminator": {"propertyName": discriminator, "mapping": {k: r["$ref"] for k, r in refs.items()}},
        }
        if description:
            body["description"] = description
        return body

    return settings_component(name, build)


# --- what a catalog entry says about its accounts ----------------------------------------------------------


def identifier_names(provider: ProviderEntry) -> list[str]:
    """The keys an account's ``identifiers`` may hold: its non-secret fields, and the address an OAuth
    connection records."""
    names = [spec.name for spec in provider.fields("account") if not spec.secret]
    if provider.auth_mode in OAUTH_MODES:
        names.append("email")
    return names


def identifiers_schema(provider: ProviderEntry) -> JSONSchema:
    schema = field_schemas.stored_schema(provider, "account")
    if provider.auth_mode in OAUTH_MODES:
        schema["properties"]["email"] = {"type": "string", "description": "The address the provider gave."}
    schema["description"] = "The account's non-secret fields (never a secret)."
    return schema


def provider_data_schema(provider: ProviderEntry) -> JSONSchema:
    """What the provider told us about the account at its last check: the catalog's ``verify.keep`` names,
    and what the type's hooks add (Hugging Face's ``rate_limit`` and ``orgs``, Entra ID's Graph ``roles``)."""
    kept = sorted(set(provider.verify.keep.values())) if provider.verify is not None else []
    return {
        "type": "object",
        "description": "Non-secret data the provider returned at the last verification or sign-in (e.g. Hugging "
        "Face: user, orgs, token role and rate limits; Entra ID: tenant and app roles). Empty until the first "
        "successful check.",
        "properties": {name: {"description": f"`verify.keep` → {name}"} for name in kept},
        "additionalProperties": True,
    }


MAIL_USAGE: Final[JSONSchema] = {
    "type": "object",
    "required": ["daily_cap", "sent_today"],
    "additionalProperties": False,
    "description": "An SMTP account's sending today (UTC): its daily cap (null: none) and how many mails it sent.",
    "properties": {
        "daily_cap": nullable({"type": "integer", "minimum": 1}),
        "sent_today": {"type": "integer", "minimum": 0},
    },
}


def sends_mail(provider: ProviderEntry) -> bool:
    """Whether the type's accounts are mailers (they get ``mail`` in their snapshot)."""
    return provider.auth_mode == AuthMode.SMTP


# --- field schemas as a value (GET …/providers/schema) --------------------------------------------------------

FIELD_SCHEMA = component(
    "FieldSchema",
    {
        "type": "object",
        "description": "A JSON Schema (2020-12) of one field, with the form's annotations (`x-…`).",
        "required": ["title", "x-order"],
        "additionalProperties": True,
        "properties": {
            "title": _STR,
            "description": _STR,
            "writeOnly": {"type": "boolean", "description": "A secret: never returned, set in a secure dialog."},
            "default": {},
            "examples": {"type": "array"},
            "x-order": {"type": "integer"},
            "x-visible-when": {"type": "object", "additionalProperties": {"type": "array"}},
            "x-admin-only": {"type": "boolean"},
            "x-advanced": {"type": "boolean"},
            "x-enum-labels": {"type": "object", "additionalProperties": _STR},
            "x-env-fallback": _STR,
            "x-suggest": _STR,
        },
    },
)


def field_set_schema(provider: ProviderEntry, which: str) -> JSONSchema:
    """The shape of a published field-set schema of this type: which properties it has (exactly)."""
    names = [spec.name for spec in provider.fields("config" if which == "config" else "account")]
    return {
        "type": "object",
        "description": "A JSON Schema (draft 2020-12) of the field set; secret fields carry `writeOnly: true`.",
        "required": ["$schema", "title", "type", "properties", "required", "additionalProperties", "x-field-order"],
        "additionalProperties": True,
        "properties": {
            "$schema": {"const": field_schemas.DIALECT},
            "title": _STR,
            "type": {"const": "object"},
            "properties": {
                "type": "object",
                "required": names,
                "additionalProperties": False,
                "properties": dict.fromkeys(names, FIELD_SCHEMA),
            },
            "required": {"type": "array", "items": {"type": "string", "enum": names} if names else _STR},
            "additionalProperties": {"const": False},
            "x-field-order": {"type": "array", "items": _STR},
            "allOf": {"type": "array", "items": {"type": "object", "additionalProperties": True}},
        },
    }


def provider_type_schema(provider: ProviderEntry) -> JSONSchema:
    return {
        "type": "object",
        "title": provider.display_name,
        "required": [
            "id",
            "display_name",
            "auth_mode",
            "description",
            "docs_url",
            "admin_warnings",
            "rotation_days",
            "revoke",
            "refresh",
            "config",
            "account",
        ],
        "additionalProperties": False,
        "properties": {
            "id": {"const": provider.id, "description": "The catalog id (AuthProviderType)."},
            "display_name": _STR,
            "auth_mode": {"const": provider.auth_mode.value},
            "description": _STR,
            "docs_url": _STR,
            "admin_warnings": {"type": "array", "items": _STR},
            "rotation_days": nullable({"type": "integer", "minimum": 1}),
            "revoke": {
                "type": "object",
                "required": ["supported", "hint"],
                "additionalProperties": False,
                "properties": {"supported": {"type": "boolean"}, "hint": _STR},
            },
            "refresh": {"type": "string", "enum": ["none", "standard"]},
            "config": {**field_set_schema(provider, "config"), "title": "Provider-config fields (set by an admin)"},
            "account": {**field_set_schema(provider, "account"), "title": "Connected-account fields"},
        },
    }


def secrets_schema(provider: ProviderEntry) -> JSONSchema:
    names = [spec.name for spec in provider.secret_fields("config")]
    state: JSONSchema = {
        "type": "object",
        "required": ["set", "changed_at"],
        "additionalProperties": False,
        "properties": {"set": {"type": "boolean"}, "changed_at": nullable(DATETIME)},
    }
    return {
        "type": "object",
        "description": "One entry per secret field of the type: whether a value is stored, and when it last "
        "changed. Never the value.",
        "required": names,
        "additionalProperties": False,
        "properties": dict.fromkeys(names, state),
    }
