"""``/api/account-manager/webhooks``: signed webhook endpoints, their delivery log and redeliver.

Reading needs ``webhooks:read``; registering, changing, deleting, rotating a secret and redelivering need
``webhooks:write``. The rules are the console's and the CLI's (app.services.webhooks).

The signing secret is handed out twice only: in the answer to the create and to the rotate call (both audited,
``webhook_endpoint.create`` / ``webhook_endpoint.secret_rotate``). Neither call takes an Idempotency-Key:
a replayed answer would have to keep the secret in the database in clear. No other answer carries it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Final

from sqlalchemy.orm import Session
from werkzeug.wrappers import Response

from app.api import bodies
from app.api.registry import DATETIME, JSONSchema, QueryParam, component, document, nullable
from app.api.security import api_audit_ctx, api_auth, api_blueprint, json_response
from app.errors import AppError
from app.extensions import db_session, get_cipher, get_settings
from app.models.base import ID_MAX
from app.models.webhooks import WebhookDelivery, WebhookEndpoint
from app.services import webhooks
from app.webhook_events import EVENT_TYPES

bp = api_blueprint("api_webhooks", __name__)

TAGS: Final = ("webhooks",)
_ID: Final[JSONSchema] = {"type": "integer", "minimum": 1, "maximum": ID_MAX}
ENDPOINT_ID_PARAM: Final = {"endpoint_id": (_ID, "The webhook endpoint's id.")}
DELIVERY_PARAMS: Final = {**ENDPOINT_ID_PARAM, "delivery_id": (_ID, "The delivery's id (from the delivery log).")}
_SECRET_NOTE: Final = (
    " The answer carries `signing_secret` (Standard Webhooks `whsec_…`): store it in the receiver now; it is "
    "never shown again."
)

EVENT_TYPE = component(
    "WebhookEventType",
    {
        "type": "string",
        "enum": [t.name for t in EVENT_TYPES],
        "description": "; ".join(f"`{t.name}`: {t.description}" for t in EVENT_TYPES),
    },
)
_URL: Final[JSONSchema] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 2000,
    "pattern": "^https?://[!-~]+$",
    "description": "http(s) URL that receives POSTs; its host must pass the outbound guard (no internal "
    "addresses unless AMI_AUTH_OUTBOUND_ALLOW lists them), checked now and on every delivery.",
}
_EVENTS: Final[JSONSchema] = {"type": "array", "items": EVENT_TYPE, "minItems": 1, "uniqueItems": True}
_DESCRIPTION: Final[JSONSchema] = {"type": "string", "maxLength": 200, "pattern": "^[^\\x00-\\x1f\\x7f]*$"}

ENDPOINT = component(
    "WebhookEndpoint",
    {
        "type": "object",
        "required": ["id", "url", "description", "events", "enabled", "previous_secret_until", "created_at"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "integer"},
            "url": {"type": "string"},
            "description": {"type": "string"},
            "events": {"type": "array", "items": EVENT_TYPE},
            "enabled": {"type": "boolean"},
            "previous_secret_until": nullable(
                {**DATETIME, "description": "Until when the previous secret signs too (after a rotation)."}
            ),
            "created_at": DATETIME,
        },
    },
)
ENDPOINT_LIST = component(
    "WebhookEndpointList",
    {
        "type": "object",
        "required": ["endpoints"],
        "additionalProperties": False,
        "properties": {"endpoints": {"type": "array", "items": ENDPOINT}},
    },
)
ENDPOINT_WITH_SECRET = component(
    "WebhookEndpointWithSecret",
    {
        "type": "object",
        "required": ["endpoint", "signing_secret"],
        "additionalProperties": False,
        "properties": {
            "endpoint": ENDPOINT,
            "signing_secret": {"type": "string", "pattern": "^whsec_", "description": "Shown once."},
        },
    },
)
CREATE_REQUEST = component(
    "WebhookEndpointCreate",
    {
        "type": "object",
        "required": ["url", "events"],
        "additionalProperties": False,
        "properties": {
            "url": _URL,
            "events": _EVENTS,
            "description": _DESCRIPTION,
            "enabled": {"type": "boolean", "default": True},
        },
    },
)
UPDATE_REQUEST = component(
    "WebhookEndpointUpdate",
    {
        "type": "object",
        "additionalProperties": False,
        "properties": {"url": _URL, "events": _EVENTS, "description": _DESCRIPTION, "enabled": {"type": "boolean"}},
    },
)
ROTATE_REQUEST = component(
    "WebhookSecretRotate",
    {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "overlap_hours": {
                "type": "integer",
                "minimum": 0,
                "maximum": 168,
                "default": 24,
                "description": "How long the old secret keeps signing too (a second signature); 0 stops it now.",
            }
        },
    },
)
ATTEMPT = component(
    "WebhookAttempt",
    {
        "type": "object",
        "required": ["at", "status", "error", "duration_ms"],
        "additionalProperties": False,
        "properties": {
            "at": DATETIME,
            "status": nullable({"type": "integer", "description": "The receiver's HTTP status."}),
            "error": nullable({"type": "string", "description": "Why no answer came (refused, timeout…)."}),
            "duration_ms": {"type": "integer", "minimum": 0},
        },
    },
)
DELIVERY = component(
    "WebhookDelivery",
    {
        "type": "object",
        "required": ["id", "event_id", "event_type", "subject", "state", "attempts", "next_attempt_at", "log"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "integer"},
            "event_id": {"type": "string", "description": "The stable `webhook-id` of every try."},
            "event_type": EVENT_TYPE,
            "subject": {"type": "string", "description": "What it is about: `connected_account:12`, `user:3`…"},
            "state": {"type": "string", "enum": ["pending", "delivered", "failed"]},
            "attempts": {"type": "integer", "minimum": 0},
            "next_attempt_at": nullable(DATETIME),
            "log": {"type": "array", "items": ATTEMPT},
        },
    },
)
DELIVERY_LIST = component(
    "WebhookDeliveryList",
    {
        "type": "object",
        "required": ["deliveries"],
        "additionalProperties": False,
        "properties": {"deliveries": {"type": "array", "items": DELIVERY}},
    },
)


def _endpoint_json(endpoint: WebhookEndpoint) -> dict[str, Any]:
    until = endpoint.previous_secret_until
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "description": endpoint.description,
        "events": list(endpoint.events),
        "enabled": endpoint.enabled,
        "previous_secret_until": until.isoformat() if until is not None else None,
        "created_at": endpoint.created_at.isoformat(),
    }


def _delivery_json(view: webhooks.DeliveryView) -> dict[str, Any]:
    d = view.delivery
    return {
        "id": d.id,
        "event_id": view.event.public_id,
        "event_type": view.event.type,
        "subject": view.event.subject,
        "state": d.state,
        "attempts": d.attempts,
        "next_attempt_at": d.next_attempt_at.isoformat() if d.next_attempt_at is not None else None,
        "log": [
            {"at": a.at.isoformat(), "status": a.status, "error": a.error, "duration_ms": a.duration_ms}
            for a in view.attempts
        ],
    }


def _events(data: dict[str, Any]) -> list[str]:
    value = data.get("events")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AppError("validation_failed", fields={"events": "Use a list of event types."})
    return value


def _flag(data: dict[str, Any], key: str) -> bool | None:
    if key not in data:
        return None
    if not isinstance(data[key], bool):
        raise AppError("validation_failed", fields={key: "Use true or false."})
    return bool(data[key])


def _text(data: dict[str, Any], key: str, max_length: int) -> str | None:
    return bodies.plain_text(data[key], key, max_length=max_length) if key in data else None


def _run(db: Session, work: Any) -> Any:
    try:
        result = work()
        db.commit()
    except AppError:
        db.rollback()
        raise
    return result


@bp.get("/account-manager/webhooks")
@api_auth("webhooks:read")
@document(
    operation_id="listWebhookEndpoints",
    summary="List webhook endpoints",
    description="Every registered endpoint with the events it receives. Scope `webhooks:read`.",
    response=ENDPOINT_LIST,
    tags=TAGS,
)
def list_webhook_endpoints() -> Response:
    return json_response({"endpoints": [_endpoint_json(e) for e in webhooks.list_endpoints(db_session())]})


@bp.post("/account-manager/webhooks")
@api_auth("webhooks:write")
@document(
    operation_id="createWebhookEndpoint",
    summary="Register a webhook endpoint",
    description="Registers a URL for the chosen events; deliveries are signed per Standard Webhooks "
    "(`webhook-id`, `webhook-timestamp`, `webhook-signature`). Audited. Scope `webhooks:write`." + _SECRET_NOTE,
    status=201,
    response=ENDPOINT_WITH_SECRET,
    response_description="Registered; `Location` is its URL.",
    request=CREATE_REQUEST,
    errors=(422,),
    tags=TAGS,
)
def create_webhook_endpoint() -> Response:
    data = bodies.json_object(allowed=("url", "events", "description", "enabled"), required=("url", "events"))
    url = _text(data, "url", 2000) or ""
    events = _events(data)
    description = _text(data, "description", 200) or ""
    enabled = _flag(data, "enabled")
    db = db_session()
    made: webhooks.NewSecret = _run(
        db,
        lambda: webhooks.create_endpoint(
            db,
            get_settings(),
            get_cipher(),
            api_audit_ctx(),
            url=url,
            events=events,
            description=description,
            enabled=enabled is not False,
        ),
    )
    body = {"endpoint": _endpoint_json(made.endpoint), "signing_secret": made.value}
    return json_response(body, 201, location=f"/api/account-manager/webhooks/{made.endpoint.id}")


@bp.get("/account-manager/webhooks/<int:endpoint_id>")
@api_auth("webhooks:read")
@document(
    operation_id="getWebhookEndpoint",
    summary="One webhook endpoint",
    description="Its URL, events and state (never its secret). Scope `webhooks:read`.",
    response=ENDPOINT,
    path=ENDPOINT_ID_PARAM,
    errors=(404,),
    tags=TAGS,
)
def get_webhook_endpoint(endpoint_id: int) -> Response:
    return json_response(_endpoint_json(webhooks.get_endpoint(db_session(), endpoint_id)))


@bp.patch("/account-manager/webhooks/<int:endpoint_id>")
@api_auth("webhooks:write")
@document(
    operation_id="updateWebhookEndpoint",
    summary="Change a webhook endpoint",
    description="Changes what is given: URL, events (replaces the list), description, enabled. A disabled "
    "endpoint gets no new deliveries and its pending ones wait. Audited. Scope `webhooks:write`.",
    response=ENDPOINT,
    request=UPDATE_REQUEST,
    path=ENDPOINT_ID_PARAM,
    errors=(404, 422),
    tags=TAGS,
)
def update_webhook_endpoint(endpoint_id: int) -> Response:
    data = bodies.json_object(allowed=("url", "events", "description", "enabled"))
    url = _text(data, "url", 2000)
    events = _events(data) if "events" in data else None
    description = _text(data, "description", 200)
    enabled = _flag(data, "enabled")
    db = db_session()
    endpoint = webhooks.get_endpoint(db, endpoint_id)
    _run(
        db,
        lambda: webhooks.update_endpoint(
            db,
            get_settings(),
            api_audit_ctx(),
            endpoint,
            url=url,
            events=events,
            description=description,
            enabled=enabled,
        ),
    )
    return json_response(_endpoint_json(endpoint))


@bp.delete("/account-manager/webhooks/<int:endpoint_id>")
@api_auth("webhooks:write")
@document(
    operation_id="deleteWebhookEndpoint",
    summary="Delete a webhook endpoint",
    description="Deletes it with its secrets and delivery log; pending deliveries are dropped. Audited. "
    "Scope `webhooks:write`.",
    status=204,
    response=None,
    response_description="Deleted.",
    path=ENDPOINT_ID_PARAM,
    errors=(404,),
    tags=TAGS,
)
def delete_webhook_endpoint(endpoint_id: int) -> Response:
    db = db_session()
    endpoint = webhooks.get_endpoint(db, endpoint_id)
    _run(db, lambda: webhooks.delete_endpoint(db, api_audit_ctx(), endpoint))
    return Response(status=204)


@bp.post("/account-manager/webhooks/<int:endpoint_id>/rotate-secret")
@api_auth("webhooks:write")
@document(
    operation_id="rotateWebhookSecret",
    summary="Rotate a webhook endpoint's signing secret",
    description="Makes a new secret. During the overlap (default 24 h) every delivery carries two signatures, "
    "one per secret, so the receiver may switch at any moment within it. Audited. Scope `webhooks:write`."
    + _SECRET_NOTE,
    response=ENDPOINT_WITH_SECRET,
    request=ROTATE_REQUEST,
    path=ENDPOINT_ID_PARAM,
    errors=(404, 422),
    tags=TAGS,
)
def rotate_webhook_secret(endpoint_id: int) -> Response:
    data = bodies.json_object(allowed=("overlap_hours",))
    hours = data.get("overlap_hours", 24)
    if isinstance(hours, float) and hours.is_integer():
        hours = int(hours)
    if isinstance(hours, bool) or not isinstance(hours, int) or not 0 <= hours <= 168:
        raise AppError("validation_failed", fields={"overlap_hours": "Use a whole number of hours from 0 to 168."})
    db = db_session()
    endpoint = webhooks.get_endpoint(db, endpoint_id)
    made: webhooks.NewSecret = _run(
        db,
        lambda: webhooks.rotate_secret(db, get_cipher(), api_audit_ctx(), endpoint, overlap=timedelta(hours=hours)),
    )
    return json_response({"endpoint": _endpoint_json(made.endpoint), "signing_secret": made.value})


@bp.get("/account-manager/webhooks/<int:endpoint_id>/deliveries")
@api_auth("webhooks:read")
@document(
    operation_id="listWebhookDeliveries",
    summary="An endpoint's delivery log",
    description="The newest deliveries first, each with its event id and type, its state and every try with "
    "the receiver's status code (or why none came). Scope `webhooks:read`.",
    response=DELIVERY_LIST,
    path=ENDPOINT_ID_PARAM,
    query=(QueryParam("limit", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}, "How many."),),
    errors=(404, 422),
    tags=TAGS,
)
def list_webhook_deliveries(endpoint_id: int) -> Response:
    limit = bodies.query_int("limit", default=50, low=1, high=200)
    db = db_session()
    views = webhooks.deliveries(db, webhooks.get_endpoint(db, endpoint_id), limit=limit)
    return json_response({"deliveries": [_delivery_json(v) for v in views]})


@bp.post("/account-manager/webhooks/<int:endpoint_id>/deliveries/<int:delivery_id>/redeliver")
@api_auth("webhooks:write")
@document(
    operation_id="redeliverWebhook",
    summary="Send a delivery again",
    description="Queues the delivery again whatever its state, with the same event id and a fresh retry "
    "schedule; the delivery job sends it on its next run. Audited. Scope `webhooks:write`.",
    response=DELIVERY,
    path=DELIVERY_PARAMS,
    errors=(404,),
    tags=TAGS,
)
def redeliver_webhook(endpoint_id: int, delivery_id: int) -> Response:
    db = db_session()
    delivery: WebhookDelivery = webhooks.get_delivery(db, webhooks.get_endpoint(db, endpoint_id), delivery_id)
    _run(db, lambda: webhooks.redeliver(db, api_audit_ctx(), delivery))
    return json_response(_delivery_json(webhooks.delivery_view(db, delivery)))
