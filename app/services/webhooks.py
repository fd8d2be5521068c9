"""Webhook endpoints as one set of rules for the console, the CLI and the API.

Takes a Session and never commits (the face commits or rolls back). Audits names, never values: a signing
secret is generated here, stored in the vault, and handed to the caller once (the console page, the CLI's
output, the API's audited create/rotate answer); it cannot be read back afterwards.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final
from urllib.parse import urlsplit

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app import audit
from app.errors import AppError
from app.i18n import gettext as _
from app.jobs.webhooks import CURRENT_SECRET, OWNER_TYPE, PREVIOUS_SECRET
from app.models.base import ID_MAX, utcnow
from app.models.webhooks import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent
from app.outbound import OutboundBlocked, OutboundGuard, UnresolvedHost
from app.settings import Settings
from app.vault.cipher import Cipher
from app.vault.store import delete_secrets, get_secret, put_secret
from app.webhook_events import EVENT_NAMES, EVENT_TYPES

__all__ = [
    "DEFAULT_OVERLAP",
    "EVENT_TYPES",
    "NewSecret",
    "create_endpoint",
    "delete_endpoint",
    "deliveries",
    "delivery_view",
    "get_delivery",
    "get_endpoint",
    "list_endpoints",
    "redeliver",
    "rotate_secret",
    "update_endpoint",
]

DEFAULT_OVERLAP: Final = timedelta(hours=24)
MAX_OVERLAP: Final = timedelta(days=7)
_URL_MAX: Final = 2000
_DESCRIPTION_MAX: Final = 200


@dataclass(frozen=True)
class NewSecret:
    """A signing secret to show once; ``repr`` hides it."""

    endpoint: WebhookEndpoint
    value: str

    def __repr__(self) -> str:
        return f"NewSecret(endpoint={self.endpoint.id}, value='**********')"


def _new_secret() -> str:
    # Standard Webhooks: "whsec_" + base64 of 24 to 64 random bytes.
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _invalid(field: str, message: str) -> AppError:
    return AppError("validation_failed", fields={field: message})


def check_url(settings: Settings, url: str) -> str:
    """An http(s) URL whose host the outbound guard lets through now (checked again on every delivery)."""
    url = url.strip()
    if not url:
        raise _invalid("url", _("Enter the URL that receives the events."))
    if len(url) > _URL_MAX:
        raise _invalid("url", _("Use at most %(limit)s characters.", limit=_URL_MAX))
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise _invalid("url", _("Enter a URL such as https://cms.example.com/hooks/ami-auth.")) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _invalid("url", _("Enter an http(s) URL such as https://cms.example.com/hooks/ami-auth."))
    if parts.username or parts.password:
        raise _invalid("url", _("Leave credentials out of the URL: deliveries are signed instead."))
    try:
        OutboundGuard.from_settings(settings).vetted_addresses(parts.hostname, port)
    except OutboundBlocked as exc:
        raise _invalid("url", f"{exc.text} {exc.help}") from None
    except (UnresolvedHost, UnicodeError, ValueError):
        raise _invalid("url", _("The host %(host)s has no address: check the spelling.", host=parts.hostname)) from None
    return url


def _events(events: Iterable[str]) -> list[str]:
    chosen = list(dict.fromkeys(events))
    unknown = [e for e in chosen if e not in EVENT_NAMES]
    if unknown:
        raise _invalid("events", _("Unknown event type(s): %(types)s.", types=", ".join(sorted(unknown))))
    if not chosen:
        raise _invalid("events", _("Choose at least one event."))
    order = [t.name for t in EVENT_TYPES]
    return sorted(chosen, key=order.index)


def _description(text: str) -> str:
    text = text.strip()
    if len(text) > _DESCRIPTION_MAX:
        raise _invalid("description", _("Use at most %(limit)s characters.", limit=_DESCRIPTION_MAX))
    return text


def list_endpoints(db: Session) -> Sequence[WebhookEndpoint]:
    return db.execute(select(WebhookEndpoint).order_by(WebhookEndpoint.id)).scalars().all()


def get_endpoint(db: Session, endpoint_id: int) -> WebhookEndpoint:
    endpoint = db.get(WebhookEndpoint, endpoint_id) if 0 < endpoint_id <= ID_MAX else None
    if endpoint is None:
        raise AppError("not_found", _("There is no such webhook endpoint."), _("List the endpoints to see their ids."))
    return endpoint


def create_endpoint(
    db: Session,
    settings: Settings,
    cipher: Cipher,
    ctx: audit.AuditContext,
    *,
    url: str,
    events: Iterable[str],
    description: str = "",
    enabled: bool = True,
) -> NewSecret:
    checked = check_url(settings, url)
    chosen = _events(events)
    endpoint = WebhookEndpoint(url=checked, events=chosen, description=_description(description), enabled=enabled)
    db.add(endpoint)
    db.flush()
    value = _new_secret()
    put_secret(db, cipher, OWNER_TYPE, endpoint.id, CURRENT_SECRET, value, grace=None)
    audit.record(
        db,
        ctx,
        "webhook_endpoint.create",
        target=f"webhook_endpoint:{endpoint.id}",
        details={"url": checked, "events": chosen, "enabled": enabled, "signing_secret_issued": True},
    )
    return NewSecret(endpoint, value)


def update_endpoint(
    db: Session,
    settings: Settings,
    ctx: audit.AuditContext,
    endpoint: WebhookEndpoint,
    *,
    url: str | None = None,
    events: Iterable[str] | None = None,
    description: str | None = None,
    enabled: bool | None = None,
) -> list[str]:
    """Apply what is given; returns the names of the fields that changed (audited when any did)."""
    changed: list[str] = []
    if url is not None and url.strip() != endpoint.url:
        endpoint.url = check_url(settings, url)
        changed.append("url")
    if events is not None:
        chosen = _events(events)
        if chosen != endpoint.events:
            endpoint.events = chosen
            changed.append("events")
    if description is not None and _description(description) != endpoint.description:
        endpoint.description = _description(description)
        changed.append("description")
    if enabled is not None and enabled != endpoint.enabled:
        endpoint.enabled = enabled
        changed.append("enabled")
    if changed:
        db.flush()
        audit.record(
            db,
            ctx,
            "webhook_endpoint.update",
            target=f"webhook_endpoint:{endpoint.id}",
            details={"fields": changed, "url": endpoint.url, "events": endpoint.events, "enabled": endpoint.enabled},
        )
    return changed


def delete_endpoint(db: Session, ctx: audit.AuditContext, endpoint: WebhookEndpoint) -> None:
    deleted = delete_secrets(db, OWNER_TYPE, endpoint.id)
    audit.record(
        db,
        ctx,
        "webhook_endpoint.delete",
        target=f"webhook_endpoint:{endpoint.id}",
        details={"url": endpoint.url, "vault_rows_deleted": deleted},
    )
    db.delete(endpoint)
    db.flush()


def rotate_secret(
    db: Session,
    cipher: Cipher,
    ctx: audit.AuditContext,
    endpoint: WebhookEndpoint,
    *,
    overlap: timedelta = DEFAULT_OVERLAP,
    now: datetime | None = None,
) -> NewSecret:
    """A new current secret; the old one keeps signing too (a second signature) for ``overlap``, so the
    receiver can switch to the new secret at any time within it. ``overlap=0`` drops the old one now."""
    if overlap < timedelta(0) or overlap > MAX_OVERLAP:
        raise _invalid("overlap", _("Choose an overlap between 0 and 7 days."))
    now = now or utcnow()
    old = get_secret(db, cipher, OWNER_TYPE, endpoint.id, CURRENT_SECRET)
    if old is not None and overlap > timedelta(0):
        put_secret(db, cipher, OWNER_TYPE, endpoint.id, PREVIOUS_SECRET, old, grace=None, now=now)
        endpoint.previous_secret_until = now + overlap
    else:
        endpoint.previous_secret_until = None
    value = _new_secret()
    put_secret(db, cipher, OWNER_TYPE, endpoint.id, CURRENT_SECRET, value, grace=None, now=now)
    db.flush()
    audit.record(
        db,
        ctx,
        "webhook_endpoint.secret_rotate",
        target=f"webhook_endpoint:{endpoint.id}",
        details={"overlap_seconds": int(overlap.total_seconds()), "signing_secret_issued": True},
    )
    return NewSecret(endpoint, value)


@dataclass(frozen=True)
class DeliveryView:
    """One delivery with its event and its attempts, for the log pages and the API."""

    delivery: WebhookDelivery
    event: WebhookEvent
    attempts: Sequence[WebhookAttempt]


def deliveries(db: Session, endpoint: WebhookEndpoint, *, limit: int = 50) -> list[DeliveryView]:
    """The newest deliveries of an endpoint, newest first, with their attempts."""
    rows = db.execute(
        select(WebhookDelivery, WebhookEvent)
        .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.endpoint_id == endpoint.id)
        .order_by(WebhookDelivery.id.desc())
        .limit(limit)
    ).all()
    ids = [d.id for d, _ in rows]
    attempts: dict[int, list[WebhookAttempt]] = {i: [] for i in ids}
    if ids:
        for attempt in db.execute(
            select(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(ids)).order_by(WebhookAttempt.id)
        ).scalars():
            attempts[attempt.delivery_id].append(attempt)
    return [DeliveryView(d, e, attempts[d.id]) for d, e in rows]


def delivery_view(db: Session, delivery: WebhookDelivery) -> DeliveryView:
    event = db.get(WebhookEvent, delivery.event_id)
    assert event is not None  # deliveries go with their event (ON DELETE CASCADE)
    attempts = db.execute(
        select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery.id).order_by(WebhookAttempt.id)
    ).scalars()
    return DeliveryView(delivery, event, list(attempts))


def get_delivery(db: Session, endpoint: WebhookEndpoint, delivery_id: int) -> WebhookDelivery:
    found = db.get(WebhookDelivery, delivery_id) if 0 < delivery_id <= ID_MAX else None
    if found is None or found.endpoint_id != endpoint.id:
        raise AppError("not_found", _("There is no such delivery for this endpoint."), _("Reload the delivery log."))
    return found


def redeliver(
    db: Session, ctx: audit.AuditContext, delivery: WebhookDelivery, *, now: datetime | None = None
) -> WebhookDelivery:
    """Send a delivery again (whatever its state) with a fresh retry schedule; same event id."""
    now = now or utcnow()
    db.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery.id)
        .values(state="pending", next_attempt_at=now, started_at=now, attempts=0, delivered_at=None)
        .execution_options(synchronize_session=False)
    )
    db.refresh(delivery)
    audit.record(
        db,
        ctx,
        "webhook_delivery.redeliver",
        target=f"webhook_endpoint:{delivery.endpoint_id}",
        details={"delivery": delivery.id, "event": delivery.event_id},
    )
    return delivery


def pending_count(db: Session, endpoint: WebhookEndpoint) -> int:
    return int(
        db.execute(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.state == "pending")
        ).scalar_one()
    )
