"""JSON Schema (draft 2020-12) for each provider type's config and account fields, generated from the
same catalog entries the admin forms are built from.

Conventions beyond the standard: ``writeOnly: true`` on secret fields (never returned by any endpoint);
``x-order`` (display order), ``x-visible-when`` (the catalog condition; hidden fields are ignored),
``x-admin-only``, ``x-advanced``, ``x-enum-labels`` and ``x-env-fallback``. ``required`` lists what a
new submission must contain; on update a secret field may be left out to keep the stored value.
"""

from __future__ import annotations

from typing import Any

from app.api.registry import JSONSchema, settings_component
from app.providers.entries import FieldSpec, ProviderEntry
from app.providers.registry import Catalog, catalog_for
from app.providers.types import FieldType, Which
from app.settings import Settings

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _provider_type(settings: Settings) -> JSONSchema:
    return {
        "type": "string",
        "enum": list(catalog_for(settings).ids()),
        "description": "A provider type id (the catalog's: GET /api/account-manager/providers/schema).",
    }


# The ids are the catalog's, which the settings may extend (AMI_AUTH_CATALOG_DIR): built with each app's document.
PROVIDER_TYPE = settings_component("ProviderTypeId", _provider_type)


def _base(spec: FieldSpec) -> dict[str, Any]:
    kind = spec.type
    if kind == FieldType.INTEGER:
        schema: dict[str, Any] = {"type": "integer"}
        if spec.min is not None:
            schema["minimum"] = spec.min
        if spec.max is not None:
            schema["maximum"] = spec.max
        return schema
    if kind == FieldType.BOOLEAN:
        return {"type": "boolean"}
    if kind == FieldType.STRING_LIST:
        item: dict[str, Any] = {"type": "string", "minLength": 1}
        if spec.pattern:
            item["pattern"] = spec.pattern
        return {"type": "array", "items": item, "uniqueItems": True}
    if kind == FieldType.JSON and not spec.secret:
        return {}
    schema = {"type": "string"}
    if kind == FieldType.URL:
        schema["format"] = "uri"
    elif kind == FieldType.EMAIL:
        schema["format"] = "email"
    elif kind == FieldType.ENUM:
        schema["enum"] = list(spec.enum_values)
        schema["x-enum-labels"] = {o.value: o.label for o in spec.enum}
    if spec.pattern:
        schema["pattern"] = spec.pattern
    if spec.max_length:
        schema["maxLength"] = spec.max_length
    return schema


def field_schema(spec: FieldSpec) -> dict[str, Any]:
    schema = _base(spec)
    if not spec.required and "type" in schema and spec.type != FieldType.BOOLEAN:
        # Optional fields accept null for "not set" (and so does validate_submission).
        schema["type"] = [schema["type"], "null"]
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
    schema["title"] = spec.label
    if spec.help:
        schema["description"] = spec.help
    if spec.secret:
        schema["writeOnly"] = True
    elif spec.default is not None:
        schema["default"] = spec.default
    if spec.example is not None and not spec.secret:
        schema["examples"] = [spec.example]
    schema["x-order"] = spec.order
    if spec.visible_when is not None:
        schema["x-visible-when"] = {
            t.key if t.scope != spec.which else t.field: list(t.raw) for t in spec.visible_when.terms
        }
    if spec.admin_only:
        schema["x-admin-only"] = True
    if spec.advanced:
        schema["x-advanced"] = True
    if spec.env_fallback:
        schema["x-env-fallback"] = spec.env_fallback
    if spec.suggest:
        schema["x-suggest"] = spec.suggest  # the console offers these values in a list (e.g. oauth_accounts)
    return schema


def _conditional_required(provider: ProviderEntry, which: Which, spec: FieldSpec) -> dict[str, Any] | None:
    """`visible_when` + `required` as if/then. Only same-set conditions can be expressed; a controller
    left out takes its default, so `required: [controller]` is added only when the default does not match."""
    assert spec.visible_when is not None
    properties: dict[str, Any] = {}
    required: list[str] = []
    for term in spec.visible_when.terms:
        if term.scope != which:
            return None
        controller = provider.field(which, term.field)
        assert controller is not None
        properties[term.field] = {"enum": list(term.raw)}
        if controller.default not in term.raw:
            required.append(term.field)
    condition: dict[str, Any] = {"properties": properties}
    if required:
        condition["required"] = required
    then: dict[str, Any] = {"required": [spec.name]}
    if spec.type == FieldType.BOOLEAN:
        then["properties"] = {spec.name: {"const": True}}
    return {"if": condition, "then": then}


def set_schema(provider: ProviderEntry, which: Which) -> dict[str, Any]:
    specs = provider.fields(which)
    required: list[str] = []
    conditionals: list[dict[str, Any]] = []
    for spec in specs:
        # A field left out takes its default, so only required fields without one must be sent (a
        # required boolean is an acknowledgement: it must be sent, and true).
        if not spec.required or (spec.default is not None and spec.type != FieldType.BOOLEAN):
            continue
        if spec.visible_when is None:
            required.append(spec.name)
            if spec.type == FieldType.BOOLEAN:
                conditionals.append({"properties": {spec.name: {"const": True}}})
        else:
            rule = _conditional_required(provider, which, spec)
            if rule is not None:
                conditionals.append(rule)
    schema: dict[str, Any] = {
        "$schema": DIALECT,
        "title": f"{provider.display_name} — {'provider config' if which == 'config' else 'connected account'}",
        "type": "object",
        "properties": {spec.name: field_schema(spec) for spec in specs},
        "required": required,
        "additionalProperties": False,
        "x-field-order": [spec.name for spec in specs],
    }
    if conditionals:
        schema["allOf"] = conditionals
    return schema


def provider_schema(provider: ProviderEntry) -> dict[str, Any]:
    revoke = provider.revoke
    return {
        "id": provider.id,
        "display_name": provider.display_name,
        "auth_mode": provider.auth_mode.value,
        "description": provider.description,
        "docs_url": provider.docs_url,
        "admin_warnings": list(provider.admin_warnings),
        "rotation_days": provider.rotation_days,
        "revoke": {"supported": bool(revoke and revoke.supported), "hint": revoke.hint if revoke else ""},
        "refresh": provider.refresh.mode,
        "config": set_schema(provider, "config"),
        "account": set_schema(provider, "account"),
    }


def catalog_schema(catalog: Catalog) -> dict[str, Any]:
    return {"providers": [provider_schema(provider) for provider in catalog]}
