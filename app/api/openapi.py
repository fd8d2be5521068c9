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
    SETTINGS_COMPONENTS,
    JSONSchema,
    OperationDoc,
    document,
    operation_of,
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
    401: "`not_authenticated`: no valid service token or session.",
    403: "`permission_denied`: the token or role lacks a scope (named in the message), or a cookie call "
    "failed the CSRF / origin check. `mfa_required`: the signed-in user's role requires a second factor "
    "they have not enrolled yet.",
    404: "`not_found`.",
    409: "`conflict`.",
    422: "`validation_failed`: `fields` names each bad parameter.",
    429: "`rate_limited`: wait Retry-After seconds.",
    503: "`service_unavailable`: the database or Redis is down, read-only or locked (a fault, not the "
    "request's); nothing was changed. Send the same request again after Retry-After seconds.",
}

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


def _error_response(status: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "description": _ERROR_DESCRIPTIONS.get(status, "An error in the taxonomy shape."),
        "content": {"application/json": {"schema": ERROR}},
    }
    if status in (429, 503):
        body["headers"] = {
            "Retry-After": {"required": True, "description": "Seconds to wait.", "schema": {"type": "integer"}}
        }
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
        "operationId": f"{rule.endpoint}.{method.lower()}".replace(".", "_"),
        "summary": doc.summary or rule.endpoint,
    }
    if doc.description:
        operation["description"] = doc.description
    if doc.tags:
        operation["tags"] = list(doc.tags)
    if not doc.documented:
        operation["x-undocumented"] = True
    parameters = list(path_parameters)
    for param in doc.query:
        entry: dict[str, Any] = {"name": param.name, "in": "query", "required": param.required, "schema": param.schema}
        if param.description:
            entry["description"] = param.description
        parameters.append(entry)
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
    responses[str(doc.status)] = success
    # Every call counts against a rate limit, and every call can meet an outage (app.faults).
    statuses = set(doc.errors) | {429, 503}
    if security:
        statuses.add(401)
        # 403: a missing scope; for cookie calls also a failed CSRF / origin check, or `mfa_required`
        # (the user's role requires a second factor they have not enrolled yet).
        if doc.auth is not None and (doc.auth.scopes or doc.auth.any_of or doc.auth.cookies):
            statuses.add(403)
    if path_parameters:
        statuses.add(404)
    if doc.query or doc.request is not None:
        statuses.add(422)
    for status in sorted(statuses):
        responses[str(status)] = _error_response(status)
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
    schemas = {**COMPONENTS, **{name: build(settings) for name, build in SETTINGS_COMPONENTS.items()}}
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
        "components": {"schemas": dict(sorted(schemas.items())), "securitySchemes": SECURITY_SCHEMES},
    }


@bp.get("/openapi.json")
@api_public
@document(summary="This OpenAPI document", response={"type": "object"}, tags=("meta",))
def openapi_document() -> Response:
    document_body = current_app.extensions.get("ami_openapi")
    if document_body is None:
        # Routes are fixed once the app serves requests, so the document is built once per app.
        document_body = build_document(current_app._get_current_object())  # type: ignore[attr-defined]
        current_app.extensions["ami_openapi"] = document_body
    return json_response(document_body)
