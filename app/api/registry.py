"""What each JSON endpoint documents about itself; ``app.api.openapi`` turns it into the OpenAPI document.

An endpoint describes itself with two decorators, in either order, under its route::

    @bp.get("/auth/sessions")
    @api_auth("sessions:read")                       # app.api.security: who may call it
    @document(operation_id="listSessions",         # this module: what it takes and returns
              summary="…", response=SESSION_LIST,
              query=(QueryParam("user_id", {"type": "integer", "minimum": 1}),), errors=(404, 422))
    def list_sessions() -> Response: …

The path, method and path parameters come from the Flask rule itself, so the document cannot drift
from the routes; a route under /api/ without ``document`` still appears (flagged ``x-undocumented``),
and a test fails until it is described. Shared schemas are registered once with :func:`component`.

``operation_id`` is part of the contract: generated clients name their methods after it, so it is
written by hand, never derived from a Python name that a refactoring may change. The query parameters
listed are the only ones the endpoint accepts (``app.api.security`` refuses others, and repeats, with 422).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final, TypeVar

from app.errors import TAXONOMY
from app.settings import Settings

JSONSchema = dict[str, Any]
F = TypeVar("F", bound=Callable[..., Any])

_ATTRIBUTE: Final = "__api_operation__"

# Named schemas for #/components/schemas, filled at import time by the modules that define endpoints.
COMPONENTS: dict[str, JSONSchema] = {}


def component(name: str, schema: JSONSchema) -> JSONSchema:
    """Register a shared schema and return a ``$ref`` to it. Registering a different body twice is a bug."""
    existing = COMPONENTS.get(name)
    if (existing is not None and existing != schema) or name in SETTINGS_COMPONENTS:
        raise ValueError(f"OpenAPI component {name!r} is already registered with another schema")
    COMPONENTS[name] = schema
    return {"$ref": f"#/components/schemas/{name}"}


# Schemas that depend on the app's settings (the return_to origins a dialog accepts): built with each app's
# document, so the document states exactly what that deployment accepts.
SETTINGS_COMPONENTS: dict[str, Callable[[Settings], JSONSchema]] = {}


def settings_component(name: str, build: Callable[[Settings], JSONSchema]) -> JSONSchema:
    """Register a schema built from the app's settings when its document is built; return a ``$ref``."""
    if name in COMPONENTS or SETTINGS_COMPONENTS.get(name, build) is not build:
        raise ValueError(f"OpenAPI component {name!r} is already registered")
    SETTINGS_COMPONENTS[name] = build
    return {"$ref": f"#/components/schemas/{name}"}


# Families of components whose very names depend on the settings: one per provider type of the app's catalog,
# which AMI_AUTH_CATALOG_DIR may extend (app.api.provider_types). Each builder returns {name: schema}.
SETTINGS_COMPONENT_GROUPS: dict[str, Callable[[Settings], dict[str, JSONSchema]]] = {}


def settings_component_group(prefix: str, build: Callable[[Settings], dict[str, JSONSchema]]) -> None:
    """Register a family of schemas named ``<prefix>…``, built from the app's settings with its document."""
    if prefix in SETTINGS_COMPONENT_GROUPS:
        raise ValueError(f"OpenAPI component family {prefix!r} is already registered")
    SETTINGS_COMPONENT_GROUPS[prefix] = build


def settings_components(settings: Settings) -> dict[str, JSONSchema]:
    """Every settings-dependent schema of this app's document; a name built twice is a bug."""
    built = {name: build(settings) for name, build in SETTINGS_COMPONENTS.items()}
    for prefix, build in SETTINGS_COMPONENT_GROUPS.items():
        for name, schema in build(settings).items():
            if name in built or name in COMPONENTS or not name.startswith(prefix):
                raise ValueError(f"OpenAPI component {name!r} of family {prefix!r} clashes with another")
            built[name] = schema
    return built


def nullable(schema: JSONSchema) -> JSONSchema:
    """A schema that also accepts null (OpenAPI 3.1 is JSON Schema 2020-12: no ``nullable`` keyword)."""
    return {"anyOf": [schema, {"type": "null"}]}


DATETIME: Final[JSONSchema] = {"type": "string", "format": "date-time"}

# The taxonomy shape every failure has (app.errors.AppError.to_dict).
ERROR: Final = component(
    "Error",
    {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "hint", "fields"],
                "additionalProperties": False,
                "properties": {
                    "code": {"type": "string", "enum": list(TAXONOMY)},
                    "message": {"type": "string"},
                    "hint": {"type": "string"},
                    "fields": {
                        "type": "object",
                        "description": "Per-field messages, keyed by the request field or parameter name.",
                        "additionalProperties": {"type": "string"},
                    },
                    "retry_after": {"type": "integer", "minimum": 1, "description": "Seconds; also in Retry-After."},
                    "reference": {"type": "string", "description": "Quote it to an administrator (server log)."},
                },
            }
        },
    },
)


# A failure reported inside a successful answer (a refresh the provider refused, an invitation not sent).
PROBLEM: Final = component(
    "Problem",
    {
        "type": "object",
        "required": ["code", "message", "hint"],
        "additionalProperties": False,
        "properties": {
            "code": {"type": "string", "description": "A taxonomy code (the Error schema's)."},
            "message": {"type": "string"},
            "hint": {"type": "string"},
        },
    },
)


@dataclass(frozen=True)
class AuthSpec:
    """Who may call an endpoint: the scopes a token needs, and which credentials are accepted."""

    scopes: tuple[str, ...] = ()
    # At least one of these as well (an endpoint whose body picks the exact scope, e.g. a dialog's kind:
    # the caller must hold one of the candidates before the body is read).
    any_of: tuple[str, ...] = ()
    tokens: bool = True
    cookies: bool = True
    public: bool = False
    # False: the view records its own audit event for every call (naming the token as the actor), so the
    # token's successful use is not recorded twice. Refusals are always recorded here.
    audit_use: bool = True


@dataclass(frozen=True)
class QueryParam:
    name: str
    schema: JSONSchema
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Deprecation:
    """An operation on its way out (docs/api.md, "Versioning and deprecation"): answered with
    ``Deprecation`` (RFC 9745: the date it was deprecated) and ``Sunset`` (RFC 8594: when it stops working)
    headers, and a ``Link`` to what replaces it; ``deprecated: true`` in the document."""

    since: date
    sunset: date
    successor: str


@dataclass
class OperationDoc:
    summary: str = ""
    description: str = ""
    tags: tuple[str, ...] = ()
    auth: AuthSpec | None = None
    status: int = 200
    # None: the success response has no body (e.g. 204).
    response: JSONSchema | None = None
    response_description: str = "OK"
    request: JSONSchema | None = None
    query: tuple[QueryParam, ...] = ()
    # Descriptions and schemas of path parameters, by name; the Flask converter gives a default schema.
    path: dict[str, tuple[JSONSchema, str]] = field(default_factory=dict)
    # Error statuses this endpoint can answer besides the ones every endpoint can (401/403/429, default).
    errors: tuple[int, ...] = ()
    documented: bool = False
    operation_id: str = ""
    # A creating POST that honours the Idempotency-Key header (app.api.idempotency).
    idempotent: bool = False
    deprecation: Deprecation | None = None


def operation_of(view: Callable[..., Any] | None) -> OperationDoc | None:
    value = getattr(view, _ATTRIBUTE, None) if view is not None else None
    return value if isinstance(value, OperationDoc) else None


def _ensure(view: Callable[..., Any]) -> OperationDoc:
    found = operation_of(view)
    if found is None:
        found = OperationDoc()
        setattr(view, _ATTRIBUTE, found)
    return found


def set_auth(view: Callable[..., Any], spec: AuthSpec) -> None:
    """Called by the auth decorators (``app.api.security``) so the document lists scopes and schemes."""
    _ensure(view).auth = spec


_OPERATION_ID: Final = re.compile(r"[a-z][A-Za-z0-9]{2,63}")


def document(
    *,
    operation_id: str,
    summary: str,
    response: JSONSchema | None,
    status: int = 200,
    description: str = "",
    response_description: str = "OK",
    request: JSONSchema | None = None,
    query: tuple[QueryParam, ...] = (),
    path: dict[str, tuple[JSONSchema, str]] | None = None,
    errors: tuple[int, ...] = (),
    tags: tuple[str, ...] = (),
    idempotent: bool = False,
    deprecation: Deprecation | None = None,
) -> Callable[[F], F]:
    """Describe an endpoint for the OpenAPI document (see the module docstring)."""
    if not _OPERATION_ID.fullmatch(operation_id):
        raise ValueError(f"operation_id {operation_id!r}: use lowerCamelCase, e.g. listUsers")
    if idempotent and status != 201:
        raise ValueError("Idempotency-Key is for creating POSTs (status 201)")

    def decorate(view: F) -> F:
        doc = _ensure(view)
        doc.summary = summary
        doc.description = description
        doc.tags = tags
        doc.status = status
        doc.response = response
        doc.response_description = response_description
        doc.request = request
        doc.query = query
        doc.path = dict(path or {})
        doc.errors = errors
        doc.operation_id = operation_id
        doc.idempotent = idempotent
        doc.deprecation = deprecation
        doc.documented = True
        return view

    return decorate
