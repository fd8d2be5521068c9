"""JSON Schema (draft 2020-12) for each provider type's config and account fields, generated from the
same catalog entries the admin forms are built from.

Two uses, one generator:

* ``GET /api/account-manager/providers/schema`` publishes, per type, the schema of a whole config and of
  a connected account (:func:`set_schema`, secrets included as ``writeOnly``);
* the OpenAPI document describes the provider-config bodies and answers per type (``secrets="omit"``:
  secret fields never travel through the API), so a generated client knows ``config.rotation_days`` is a
  number and ``identifiers.base_url`` a string.

The schemas say exactly what the JSON API accepts (``tests/integration/test_typescript_client.py`` asks ajv
and the server the same bodies): JSON types as sent (no ``"45"`` for 45, no ``"yes"`` for true, a list
for a list), no empty or space-padded strings (null clears an optional field), absolute http(s) URLs
without credentials, lists without repeats — :func:`json_problem` is that rule on the server's side. A
field shown only under a condition (``x-visible-when``) is checked only when it is shown, as the server
ignores what the form hides: its value rules sit in an ``if``/``then`` beside its ``required``.

Annotation keywords beyond the standard ones (:data:`ANNOTATIONS`, also in the endpoint's answer): ``x-order``
(display order), ``x-visible-when`` (the catalog condition), ``x-admin-only``, ``x-advanced``,
``x-enum-labels``, ``x-env-fallback``, ``x-suggest`` and, on the object, ``x-field-order``. They never change
validity: give them to a validator as annotations (ajv: ``new Ajv({keywords: ANNOTATIONS})``).
"""

from __future__ import annotations

import re
from typing import Any, Final, Literal

from app.api.registry import JSONSchema, settings_component
from app.providers.entries import FieldSpec, ProviderEntry
from app.providers.registry import Catalog, catalog_for
from app.providers.types import FieldType, Which
from app.providers.validation import DEFAULT_MAX_LENGTH, LIST_MAX_ITEMS, STRING_MAX_LENGTH, URL_AUTHORITY
from app.settings import Settings

DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
ANNOTATIONS: Final = (
    "x-order",
    "x-visible-when",
    "x-admin-only",
    "x-advanced",
    "x-enum-labels",
    "x-env-fallback",
    "x-suggest",
    "x-field-order",
)
# What the server accepts as a URL (app.providers.validation): http(s), an ASCII host and an optional port (the
# same expression), no user name or password, no white space or control character anywhere.
URL_PATTERN: Final = rf"^[Hh][Tt][Tt][Pp][Ss]?://{URL_AUTHORITY}(?:[/?#][^\s\x00-\x1f\x7f]*)?$"
# One line of text without surrounding white space or control characters (the JSON API takes values as they
# are meant: it trims nothing).
LINE_PATTERN: Final = r"^[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f])?$"
# What every string value looks like in the JSON API, shown or not: not empty, nothing to trim, and no control
# character but tab, CR and LF (app.web.input_guard refuses any other at the door, in every JSON string).
SHAPE_PATTERN: Final = r"^[^\s\x00-\x08\x0b\x0c\x0e-\x1f\x7f](?:[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*[^\s\x00-\x1f\x7f])?$"
TEXT_PATTERN: Final = r"^[^\s\x00-\x08\x0b\x0c\x0e-\x1f\x7f](?:[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*[^\s\x00-\x1f\x7f])?$"
_STRING_TYPES: Final = frozenset(
    {FieldType.STRING, FieldType.URL, FieldType.HOST, FieldType.EMAIL, FieldType.ENUM, FieldType.TEXT}
)

Secrets = Literal["writeonly", "omit"]


def _provider_type(settings: Settings) -> JSONSchema:
    return {
        "type": "string",
        "enum": list(catalog_for(settings).ids()),
        "description": "A provider type id (the catalog's: GET /api/account-manager/providers/schema).",
    }


# The ids are the catalog's, which the settings may extend (AMI_AUTH_CATALOG_DIR): built with each app's document.
PROVIDER_TYPE = settings_component("ProviderTypeId", _provider_type)


def _anchored(pattern: str) -> str:
    """A catalog pattern as the server applies it (``re.fullmatch``); JSON Schema's ``pattern`` searches."""
    return f"^(?:{pattern})$"


def _limit(spec: FieldSpec) -> int:
    return spec.max_length or DEFAULT_MAX_LENGTH.get(spec.type, STRING_MAX_LENGTH)


def _string(spec: FieldSpec, strict: bool) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if spec.type == FieldType.ENUM:
        schema["enum"] = list(spec.enum_values)
        return schema
    if spec.secret:
        return schema
    schema["minLength"] = 1
    if not strict:
        schema["pattern"] = SHAPE_PATTERN
        return schema
    if spec.type == FieldType.EMAIL:
        schema["format"] = "email"
    schema["maxLength"] = _limit(spec)
    patterns = [
        URL_PATTERN if spec.type == FieldType.URL else TEXT_PATTERN if spec.type == FieldType.TEXT else LINE_PATTERN
    ]
    if spec.pattern:
        patterns.append(_anchored(spec.pattern))
    schema["pattern"] = patterns[0]
    if len(patterns) > 1:
        schema["allOf"] = [{"pattern": p} for p in patterns[1:]]
    return schema


def _value(spec: FieldSpec, strict: bool) -> dict[str, Any]:
    """The schema of one non-null value: its JSON type, and (``strict``) every rule the server applies."""
    kind = spec.type
    if kind == FieldType.INTEGER:
        schema: dict[str, Any] = {"type": "integer"}
        if strict and spec.min is not None:
            schema["minimum"] = spec.min
        if strict and spec.max is not None:
            schema["maximum"] = spec.max
        return schema
    if kind == FieldType.BOOLEAN:
        return {"type": "boolean"}
    if kind == FieldType.STRING_LIST:
        item: dict[str, Any] = {"type": "string", "minLength": 1, "pattern": SHAPE_PATTERN}
        schema = {"type": "array", "items": item, "uniqueItems": True}
        if strict:
            item.update(maxLength=STRING_MAX_LENGTH, pattern=LINE_PATTERN)
            if spec.pattern:
                item["allOf"] = [{"pattern": _anchored(spec.pattern)}]
            schema["maxItems"] = LIST_MAX_ITEMS
            if spec.required:
                schema["minItems"] = 1
        return schema
    if kind == FieldType.JSON and not spec.secret:
        return {}
    return _string(spec, strict)


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or null (OpenAPI 3.1 is JSON Schema 2020-12: no ``nullable``; anyOf keeps ajv's strict types)."""
    if not schema:
        return schema  # a JSON field: anything, null included
    return {"anyOf": [schema, {"type": "null"}]}


def _strict_value(spec: FieldSpec) -> dict[str, Any]:
    value = _value(spec, strict=True)
    if spec.type == FieldType.BOOLEAN and spec.required:
        return {"const": True}  # a required boolean is an acknowledgement: sent, and true
    return value if spec.required else _nullable(value)


def field_schema(spec: FieldSpec) -> dict[str, Any]:
    """A field's property: its type and annotations, and its value rules unless it is shown only sometimes
    (then they sit in the object's ``if``/``then``, see :func:`set_schema`)."""
    # A field shown only sometimes: when hidden, any value of the right type is ignored (null included).
    base = _strict_value(spec) if spec.visible_when is None else _nullable(_value(spec, strict=False))
    schema = dict(base)
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
    if spec.type == FieldType.ENUM:
        schema["x-enum-labels"] = {o.value: o.label for o in spec.enum}
    if spec.env_fallback:
        schema["x-env-fallback"] = spec.env_fallback
    if spec.suggest:
        schema["x-suggest"] = spec.suggest  # the console offers these values in a list (e.g. oauth_accounts)
    return schema


def _condition(provider: ProviderEntry, which: Which, spec: FieldSpec) -> dict[str, Any] | None:
    """``visible_when`` as an ``if``. Only same-set conditions can be expressed; a controller left out takes
    its default, so ``required: [controller]`` is added only when the default does not match."""
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
    return condition


def _must_send(spec: FieldSpec) -> bool:
    """A field a new submission must contain: required without a default (a required boolean is an
    acknowledgement: it must be sent, and true). Secrets are set in a dialog, never in these bodies."""
    return spec.required and not spec.secret and (spec.default is None or spec.type == FieldType.BOOLEAN)


def set_schema(provider: ProviderEntry, which: Which, *, secrets: Secrets = "writeonly") -> dict[str, Any]:
    """The object schema of one field set. ``secrets="omit"`` leaves secret fields out (the API's bodies)."""
    specs = [s for s in provider.fields(which) if secrets == "writeonly" or not s.secret]
    required: list[str] = []
    rules: list[dict[str, Any]] = []
    for spec in specs:
        if spec.visible_when is None:
            if _must_send(spec):
                required.append(spec.name)
            continue
        condition = _condition(provider, which, spec)
        if condition is None:
            continue  # a condition on the other field set: the server decides
        then: dict[str, Any] = {"properties": {spec.name: _strict_value(spec)}}
        if _must_send(spec):
            then["required"] = [spec.name]
        rules.append({"if": condition, "then": then})
    schema: dict[str, Any] = {
        "$schema": DIALECT,
        "title": f"{provider.display_name} — {'provider config' if which == 'config' else 'connected account'}",
        "type": "object",
        "properties": {spec.name: field_schema(spec) for spec in specs},
        "required": required,
        "additionalProperties": False,
        "x-field-order": [spec.name for spec in specs],
    }
    if rules:
        schema["allOf"] = rules
    return schema


def body_schema(provider: ProviderEntry, which: Which) -> dict[str, Any]:
    """:func:`set_schema` for a request body of the API (no secrets; no ``$schema``: it is embedded)."""
    schema = set_schema(provider, which, secrets="omit")
    del schema["$schema"]
    return schema


def enable_rule(provider: ProviderEntry) -> dict[str, Any] | None:
    """For a new config's body: ``enabled: true`` only when no required secret is due — secrets are set in a
    dialog afterwards, so a config that needs one cannot be enabled on creation (the console's enable rule).

    A secret required under a condition (generic OIDC's client secret, unless the client is public) is due
    when the condition holds for the body's values, a controller left out counting as its default."""
    due: list[dict[str, Any]] = []
    for spec in provider.secret_fields("config"):
        if not spec.required:
            continue
        if spec.visible_when is None:
            due = [{}]  # always due: the then-branch below is `false`
            break
        # Not due when some term of its condition fails.
        escapes: list[dict[str, Any]] = []
        for term in spec.visible_when.terms:
            controller = provider.field("config", term.field)
            if term.scope != "config" or controller is None:
                escapes = []
                break
            differs = {
                "type": "object",
                "required": [term.field],
                "properties": {term.field: {"not": {"enum": list(term.raw)}}},
            }
            if controller.default in term.raw:
                escapes.append({"required": ["config"], "properties": {"config": differs}})
            else:  # left out, it takes a default that does not match
                escapes.append({"properties": {"config": {"type": "object", "not": {"required": [term.field]}}}})
                escapes.append({"properties": {"config": differs}})
                escapes.append({"not": {"required": ["config"]}})
        if not escapes:
            due = [{}]
            break
        due.append({"anyOf": escapes})
    if not due:
        return None
    then: Any = False if due == [{}] else {"allOf": due}
    return {"if": {"properties": {"enabled": {"const": True}}, "required": ["enabled"]}, "then": then}


def stored_schema(provider: ProviderEntry, which: Which) -> dict[str, Any]:
    """The non-secret values as the API returns them: the same properties, nothing required (a value left
    at its default may be absent), no other keys."""
    specs = [s for s in provider.fields(which) if not s.secret]
    return {
        "type": "object",
        "title": f"{provider.display_name} — {which} values",
        "properties": {spec.name: _nullable(_value(spec, strict=False)) for spec in specs},
        "additionalProperties": False,
    }


def json_problem(spec: FieldSpec, value: object) -> str | None:
    """What is wrong with a JSON value's form for a field, before its rules are checked (``None``: nothing).

    The console and the CLI take text for everything and convert it; the JSON API takes values as JSON
    means them, so a client validating against the published schema gets the server's answer."""
    if value is None or (spec.type == FieldType.JSON and not spec.secret):
        return None
    kind = spec.type
    if kind == FieldType.INTEGER:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "Use a whole number (a JSON number, not text)."
        if isinstance(value, float) and not value.is_integer():
            return "Use a whole number."
        return None
    if kind == FieldType.BOOLEAN:
        return None if isinstance(value, bool) else "Use true or false (not text)."
    if kind == FieldType.STRING_LIST:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            return 'Use a list of strings, e.g. ["openid", "email"].'
        if any(not item or item != item.strip() for item in value):
            return "Leave out empty entries and the spaces around entries."
        if len(set(value)) != len(value):
            return "List each entry once."
        return None
    if not isinstance(value, str):
        return "Use a string."
    if not value:
        return "Use null to clear it; an empty string is not a value."
    if value != value.strip():
        return "Remove the spaces around the value."
    return None


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
    return {"annotation_keywords": list(ANNOTATIONS), "providers": [provider_schema(provider) for provider in catalog]}


def type_name(provider_id: str) -> str:
    """``generic_api_key`` → ``GenericApiKey``: the suffix of the per-type component names."""
    return "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", provider_id) if part)
