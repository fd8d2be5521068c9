"""``GET /api/openapi.json``: an OpenAPI 3.1 document built from the app's own /api routes.

Paths, methods and path parameters come from the Flask URL map; scopes from ``api_auth``; schemas and
descriptions from ``document`` (see ``app.api.registry``). Every operation also documents the errors
any API call can answer (401/403/429 and a ``default``), all with the shared ``Error`` schema.
"""

from __future__ import annotations

import re
from typing import Any, Final

from flask import Flask, current_app
from werkzeug.routing import Rule
from werkzeug.wrappers import Response

from app.api.registry import (
    COMPONENTS,
    ERROR,
    JSONSchema,
    OperationDoc,
    document,
    operation_of,
    settings_components,
)
from app.api.security import api_blueprint, api_public, json_response
from app.api.tokens import SCOPES
from app.extensions import get_settings
from app.models.base import ID_MAX

bp = api_blueprint("api_openapi", __name__)

OPENAPI_VERSION: Final = "3.1.0"
API_VERSION: Final = "1"
_RULE_ARGUMENT: Final = re.compile(r"<(?:(?P<converter>[a-zA-Z_][a-zA-Z0-9_]*)(?:\([^)]*\))?:)?(?P<name>\w+)>")
_CONVERTER_SCHEMAS: Final[dict[str, JSONSchema]] = {
    "default": {"type": "string", "pattern": "^[^/]+$"},
    "string": {"type": "string", "pattern": "^[^/]+$"},
    "int": {"type": "integer", "minimum": 1, "maximum": ID_MAX},  # app.web.input_guard.IdConverter
    "uuid": {"type": "string", "format": "uuid"},
    "path": {"type": "string"},
}
_ERROR_DESCRIPTIONS: Final[dict[int, str]] = {
    400: "The request is malformed.",
    401: "`not_authenticated`: no valid credential (no token or session, or an unknown, revoked or expired token). "
    '`WWW-Authenticate` carries the RFC 6750 challenge (`error="invalid_token"` for a token that is not valid).',
    403: "`permission_denied`: a valid credential that may not do this: the token or role lacks a scope (named in "
    "the message), the wrong kind of credential (a service token on a cookie-only endpoint, a session cookie on "
    "a token-only one), or a cookie call failed the CSRF / origin check. `mfa_required`: the signed-in user's "
    "role requires a second factor they have not enrolled yet.",
    404: "`not_found`.",
    409: "`conflict`: the item's state does not allow it (the same cause answers the same code on every endpoint), "
    "or a request with the same Idempotency-Key is still in progress.",
    422: "`validation_failed`: `fields` names each bad parameter (an unknown or repeated query parameter too).",
    429: "`rate_limited`: wait Retry-After seconds.",
    502: "`provider_unreachable`: the provider (not AMI Auth) failed: no answer, a timeout or a 5xx. Nothing was "
    "recorded against the account's credential; try again later.",
    503: "`service_unavailable`: the database or Redis is down, read-only or locked (a fault, not the "
    "request's); nothing was changed. Send the same request again after Retry-After seconds.",
}

# Response headers, shared through #/components/headers.
HEADERS: Final[dict[str, Any]] = {
    "RateLimit": {
        "description": "The caller's quota left in this window (draft-ietf-httpapi-ratelimit-headers-10): "
        '`"<policy>";r=<remaining>;t=<seconds until it resets>`.',
        "schema": {"type": "string"},
    },
    "RateLimit-Policy": {
        "description": "The quota policy that applies (draft-ietf-httpapi-ratelimit-headers-10): "
        '`"<policy>";q=<requests>;w=<window seconds>`; policies `token`, `user` (cookie calls) and `ip`.',
        "schema": {"type": "string"},
    },
    "Retry-After": {"required": True, "description": "Seconds to wait.", "schema": {"type": "integer"}},
    "WWW-Authenticate": {
        "required": True,
        "description": 'RFC 6750 section 3: `Bearer realm="AMI Auth"`, with `error="invalid_token"` when the '
        "token presented is unknown, revoked or expired.",
        "schema": {"type": "string"},
    },
    "Location": {"required": True, "description": "The URL of the created item.", "schema": {"type": "string"}},
    "Deprecation": {
        "required": True,
        "description": "RFC 9745: this operation is deprecated, since the date given (`@<unix time>`).",
        "schema": {"type": "string"},
    },
    "Sunset": {
        "required": True,
        "description": "RFC 8594: the HTTP date after which this operation stops working.",
        "schema": {"type": "string"},
    },
    "Link": {
        "required": True,
        "description": 'Where the replacement is documented (`<…>; rel="successor-version"`).',
        "schema": {"type": "string"},
    },
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored answer to an earlier request with the same Idempotency-Key.",
        "schema": {"type": "string", "enum": ["true"]},
    },
}
IDEMPOTENCY_KEY: Final[dict[str, Any]] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "A unique value (e.g. a UUID) per intended creation, 1 to 255 printable ASCII characters. "
    "Sending the same key again within 24 hours replays the first answer instead of creating a second item; "
    "the same key with a different body is refused (422 `validation_failed` on `Idempotency-Key`), and while "
    "the first request is still running a retry gets 409 `conflict` with Retry-After.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
}


def _header(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/headers/{name}"}


SECURITY_SCHEMES: Final[dict[str, Any]] = {
    "serviceToken": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "amis_…",
        "description": "A service token created by an administrator (console: Service tokens, or "
        "`ami-auth tokens create`). The operation's listed scopes must all be granted. Scopes: "
        + "; ".join(f"`{name}`: {text}" for name, text in SCOPES.items()),
    },
    "sessionCookie": {
        "type": "apiKey",
        "in": "cookie",
        "name": "ami_session",
        "description": "The signed-in user's session (browser calls from an origin in AMI_AUTH_CMS_ORIGINS, "
        "with credentials). Admins hold every scope; members act on their own sessions only. "
        "State-changing calls also need the X-CSRFToken header.",
    },
}


def _error_response(status: int, rate_limited: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "description": _ERROR_DESCRIPTIONS.get(status, "An error in the taxonomy shape."),
        "content": {"application/json": {"schema": ERROR}},
    }
    headers: dict[str, Any] = {}
    if status in (429, 503):
        headers["Retry-After"] = _header("Retry-After")
    if status == 401:
        headers["WWW-Authenticate"] = _header("WWW-Authenticate")
    if rate_limited and status != 503:
        headers.update(RateLimit=_header("RateLimit"), **{"RateLimit-Policy": _header("RateLimit-Policy")})
    if headers:
        body["headers"] = headers
    return body


def _path_and_parameters(rule: Rule, doc: OperationDoc) -> tuple[str, list[dict[str, Any]]]:
    parameters: list[dict[str, Any]] = []

    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        converter = match.group("converter") or "default"
        schema, description = doc.path.get(name, (_CONVERTER_SCHEMAS.get(converter, {"type": "string"}), ""))
        parameter: dict[str, Any] = {"name": name, "in": "path", "required": True, "schema": schema}
        if description:
            parameter["description"] = description
        parameters.append(parameter)
        return "{" + name + "}"

    return _RULE_ARGUMENT.sub(replace, rule.rule), parameters


def _security(doc: OperationDoc) -> list[dict[str, list[str]]]:
    auth = doc.auth
    if auth is None or auth.public:
        return []
    options: list[dict[str, list[str]]] = []
    if auth.tokens:
        # Security requirement objects are alternatives (OpenAPI 3.1 §4.8.30): one per candidate scope.
        for extra in auth.any_of or (None,):
            options.append({"serviceToken": [*auth.scopes, *([extra] if extra else [])]})
    if auth.cookies:
        options.append({"sessionCookie": []})
    return options


def _operation(rule: Rule, method: str, doc: OperationDoc, path_parameters: list[dict[str, Any]]) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": doc.operation_id or f"{rule.endpoint}.{method.lower()}".replace(".", "_"),
        "summary": doc.summary or rule.endpoint,
    }
    if doc.description:
        operation["description"] = doc.description
    if doc.tags:
        operation["tags"] = list(doc.tags)
    if not doc.documented:
        operation["x-undocumented"] = True
    if doc.deprecation is not None:
        operation["deprecated"] = True
    parameters = list(path_parameters)
    for param in doc.query:
        entry: dict[str, Any] = {"name": param.name, "in": "query", "required": param.required, "schema": param.schema}
        if param.description:
            entry["description"] = param.description
        parameters.append(entry)
    if doc.idempotent:
        parameters.append(IDEMPOTENCY_KEY)
    if parameters:
        operation["parameters"] = parameters
    if doc.request is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": doc.request}}}

    security = _security(doc)
    operation["security"] = security
    if doc.auth is not None and doc.auth.scopes:
        operation["x-required-scopes"] = list(doc.auth.scopes)

    responses: dict[str, Any] = {}
    success: dict[str, Any] = {"description": doc.response_description}
    if doc.response is not None:
        success["content"] = {"application/json": {"schema": doc.response}}
    # Every call counts against a rate limit (the per-IP one for public calls).
    headers: dict[str, Any] = {"RateLimit": _header("RateLimit"), "RateLimit-Policy": _header("RateLimit-Policy")}
    if doc.status == 201:
        headers["Location"] = _header("Location")
    if doc.idempotent:
        headers["Idempotent-Replayed"] = _header("Idempotent-Replayed")
    if doc.deprecation is not None:
        headers.update({name: _header(name) for name in ("Deprecation", "Sunset", "Link")})
    success["headers"] = headers
    responses[str(doc.status)] = success
    # Every call counts against a rate limit, can meet an outage (app.faults), and is refused an unknown or
    # repeated query parameter.
    statuses = set(doc.errors) | {422, 429, 503}
    if doc.idempotent:
        statuses |= {409, 422}
    if security:
        statuses.add(401)
        # 403: a missing scope; for cookie calls also a failed CSRF / origin check, or `mfa_required`
        # (the user's role requires a second factor they have not enrolled yet).
        if doc.auth is not None and (doc.auth.scopes or doc.auth.any_of or doc.auth.cookies):
            statuses.add(403)
    if path_parameters:
        statuses.add(404)
    for status in sorted(statuses):
        responses[str(status)] = _error_response(status, rate_limited=True)
    responses["default"] = {
        "description": "Any other failure, in the taxonomy shape.",
        "content": {"application/json": {"schema": ERROR}},
    }
    operation["responses"] = responses
    return operation


def build_document(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route under /api/ in ``app``."""
    settings = get_settings(app)
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if not rule.rule.startswith("/api/"):
            continue
        doc = operation_of(app.view_functions.get(rule.endpoint)) or OperationDoc()
        path, path_parameters = _path_and_parameters(rule, doc)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(rule, method, doc, path_parameters)
    schemas = {**COMPONENTS, **settings_components(settings)}
    return {
        "openapi": OPENAPI_VERSION,
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "AMI Auth API",
            "version": API_VERSION,
            "description": 'The JSON API for the CMS. Every failure is `{"error": {code, message, hint, fields}}`.',
        },
        "servers": [{"url": settings.base_url}],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "headers": HEADERS,
            "securitySchemes": SECURITY_SCHEMES,
        },
    }


@bp.get("/openapi.json")
@api_public
@document(
    operation_id="getOpenApiDocument",
    summary="This OpenAPI document",
    response={"type": "object", "additionalProperties": True, "description": "An OpenAPI 3.1 document."},
    tags=("meta",),
)
def openapi_document() -> Response:
    document_body = current_app.extensions.get("ami_openapi")
    if document_body is None:
        # Routes are fixed once the app serves requests, so the document is built once per app.
        document_body = build_document(current_app._get_current_object())  # type: ignore[attr-defined]
        current_app.extensions["ami_openapi"] = document_body
    return json_response(document_body)
