"""The webhook delivery job: send due deliveries from the outbox, signed per Standard Webhooks, and log each try.

**At least once.** A delivery is marked delivered only after a 2xx answer, in a transaction after the
request; a crash between the two sends it again later with the same ``webhook-id`` (the event's stable
id), which is how receivers drop duplicates (Standard Webhooks, "Idempotency").

**In order per subject.** A delivery is due only when no earlier event of the same subject (one connected
account, one user, one provider config) is still pending for the same endpoint, so a receiver that is down
gets the account's events in the order they happened once it is back. Deliveries that gave up (``failed``)
no longer hold the line; a redeliver puts one back in it.

**Retries.** Standard Webhooks' suggested schedule — 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h after each
failed try: the last retry is about 27.6 hours after the first try, then the delivery is ``failed``.
A 3xx counts as a failure (redirects are not followed: the body is signed for this URL only).

**410 Gone** is the receiver saying the endpoint no longer exists (as Stripe and Svix read it): the endpoint is
disabled at once (audited as ``webhook_endpoint.disabled``), the delivery is ``failed`` and the endpoint's other
deliveries wait, pending, until an admin enables it again.

**Purge.** Events whose deliveries have all finished are deleted, with their deliveries and attempt log, once
older than ``AMI_AUTH_WEBHOOK_RETENTION_DAYS`` (:func:`purge_finished`; the scheduler runs it every tenth run),
except each account's latest state event, which "recovered" is told from.

**Claiming.** A due delivery is leased by a compare-and-set UPDATE (``lease_until`` free or past), so any
number of runs (CLI, scheduler threads, hosts) send each try once.

**The way out.** Every request goes through the app's guarded client (app.net): the target URL passes the
SSRF guard at connect time, on every try, not only when the endpoint was saved.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.orm import Session, aliased
from standardwebhooks.webhooks import Webhook

from app import audit, metrics
from app.errors import AppError
from app.models.base import utcnow
from app.models.webhooks import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent
from app.net import OutboundClient
from app.oauth.leases import new_owner
from app.settings import Settings
from app.vault.cipher import Cipher, SecretUnreadable
from app.vault.store import get_secret
from app.webhook_events import last_states, payload

__all__ = [
    "CURRENT_SECRET",
    "OWNER_TYPE",
    "PREVIOUS_SECRET",
    "RETRY_DELAYS",
    "DeliveryReport",
    "deliver_due",
    "delivery_client",
    "purge_finished",
    "signature_header",
    "signers",
]

log = logging.getLogger("ami_auth.jobs.webhooks")

OWNER_TYPE: Final = "webhook_endpoint"
CURRENT_SECRET: Final = "signing_secret"
PREVIOUS_SECRET: Final = "previous_signing_secret"
RETRY_DELAYS: Final[tuple[timedelta, ...]] = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
)
LEASE: Final = timedelta(seconds=120)
GONE: Final = 410
SYSTEM: Final = audit.AuditContext(actor="system:webhooks")
TIMEOUT: Final = 15.0
_EXCERPT: Final = 500


@dataclass
class DeliveryReport:
    delivered: int = 0
    retrying: int = 0
    failed: int = 0
    statuses: list[int | None] = field(default_factory=list)
    disabled: set[int] = field(default_factory=set)  # endpoints that answered 410 Gone in this run

    def summary(self) -> str:
        text = f"{self.delivered} delivered, {self.retrying} to retry, {self.failed} gave up"
        if self.disabled:
            text += f", {len(self.disabled)} endpoint(s) disabled (410 Gone)"
        return text


def _next_attempt(last_try: datetime, attempts: int) -> datetime | None:
    """When the try after ``attempts`` tries (the last at ``last_try``) is due, or None when the schedule is
    over. Counted from the tries themselves, not from the event: a delivery that waited in line behind an
    earlier event of its subject still gets its whole schedule, instead of catching up in one burst."""
    if attempts > len(RETRY_DELAYS):
        return None
    return last_try + RETRY_DELAYS[attempts - 1]


def _due_ids(db: Session, now: datetime, limit: int) -> list[int]:
    d = WebhookDelivery
    earlier = aliased(WebhookDelivery)
    blocked = exists().where(
        earlier.endpoint_id == d.endpoint_id,
        earlier.subject == d.subject,
        earlier.state == "pending",
        earlier.event_id < d.event_id,
    )
    rows = db.execute(
        select(d.id)
        .join(WebhookEndpoint, WebhookEndpoint.id == d.endpoint_id)
        .where(
            d.state == "pending",
            d.next_attempt_at <= now,
            or_(d.lease_until.is_(None), d.lease_until < now),
            WebhookEndpoint.enabled,
            ~blocked,
        )
        .order_by(d.event_id, d.id)
        .limit(limit)
    ).scalars()
    return list(rows)


def _claim(db: Session, ids: list[int], owner: str, now: datetime) -> list[int]:
    claimed: list[int] = []
    d = WebhookDelivery
    for delivery_id in ids:
        moved = db.execute(
            update(d)
            .where(d.id == delivery_id, d.state == "pending", or_(d.lease_until.is_(None), d.lease_until < now))
            .values(lease_owner=owner, lease_until=now + LEASE)
            .execution_options(synchronize_session=False)
        )
        if getattr(moved, "rowcount", 0) == 1:
            claimed.append(delivery_id)
    db.commit()
    return claimed


def signers(db: Session, cipher: Cipher, endpoint: WebhookEndpoint) -> tuple[Webhook, ...]:
    """The endpoint's signers: the current secret's, and the previous secret's while the rotation overlap
    lasts. Decrypted once per endpoint per run (:func:`deliver_due` keeps them for the run only)."""
    fields = [CURRENT_SECRET]
    if endpoint.previous_secret_until is not None and endpoint.previous_secret_until > utcnow():
        fields.append(PREVIOUS_SECRET)
    found = []
    for name in fields:
        secret = get_secret(db, cipher, OWNER_TYPE, endpoint.id, name)
        if secret is not None:
            found.append(Webhook(secret.reveal()))
    if not found:
        raise AppError("invalid_config", "This webhook endpoint has no signing secret.", "Rotate its secret.")
    return tuple(found)


def signature_header(signing: tuple[Webhook, ...], msg_id: str, at: datetime, body: str) -> str:
    """``webhook-signature``: one signature per secret, space-separated as the spec allows, so a receiver
    holding either secret verifies."""
    return " ".join(hook.sign(msg_id, at, body) for hook in signing)


def _send(
    db: Session,
    client: OutboundClient,
    cipher: Cipher,
    delivery: WebhookDelivery,
    cache: dict[int, tuple[Webhook, ...]],
) -> tuple[int | None, str | None, str | None]:
    """One HTTP try: (status, error, response excerpt)."""
    event = db.get(WebhookEvent, delivery.event_id)
    endpoint = db.get(WebhookEndpoint, delivery.endpoint_id)
    if event is None or endpoint is None:
        return None, "The event or endpoint was deleted.", None
    body = json.dumps(payload(event), separators=(",", ":"), sort_keys=True)
    # Signed with the wall clock, not the schedule's ``now``: receivers reject timestamps far from theirs.
    signed_at = utcnow()
    try:
        if endpoint.id not in cache:
            cache[endpoint.id] = signers(db, cipher, endpoint)
        signature = signature_header(cache[endpoint.id], event.public_id, signed_at, body)
    except SecretUnreadable as exc:
        return None, f"secret_unreadable: {exc.text}"[:300], None
    except AppError as exc:
        return None, f"{exc.code}: {exc.text}"[:300], None
    headers = {
        "content-type": "application/json",
        "webhook-id": event.public_id,
        "webhook-timestamp": str(int(signed_at.timestamp())),
        "webhook-signature": signature,
    }
    url = endpoint.url  # read before the rollback: afterwards it would be loaded again, in a new transaction
    db.rollback()  # nothing is held while the receiver answers (no transaction, no pooled connection)
    try:
        response = client.post(url, content=body.encode(), headers=headers, timeout=TIMEOUT, follow_redirects=False)
    except AppError as exc:
        return None, f"{exc.code}: {exc.text}"[:300], None
    return response.status_code, None, response.text[:_EXCERPT]


def _finish(
    db: Session,
    delivery_id: int,
    owner: str,
    result: tuple[int | None, str | None, str | None],
    at: datetime,
    duration_ms: int,
    report: DeliveryReport,
) -> None:
    status, error, excerpt = result
    delivery = db.get(WebhookDelivery, delivery_id)
    if delivery is None or delivery.lease_owner != owner:
        db.rollback()
        return
    db.add(
        WebhookAttempt(
            delivery_id=delivery_id,
            at=at,
            status=status,
            error=error,
            duration_ms=duration_ms,
            response_excerpt=excerpt,
        )
    )
    if delivery.attempts == 0:
        delivery.started_at = at
    delivery.attempts += 1
    delivery.last_status = status
    delivery.last_error = error
    delivery.lease_owner = None
    delivery.lease_until = None
    report.statuses.append(status)
    if status is not None and 200 <= status < 300:
        delivery.state = "delivered"
        delivery.delivered_at = at
        delivery.next_attempt_at = None
        report.delivered += 1
        outcome = "delivered"
    elif status == GONE:
        _disable_gone(db, delivery)
        delivery.state = "failed"
        delivery.next_attempt_at = None
        report.failed += 1
        report.disabled.add(delivery.endpoint_id)
        outcome = "failed"
    else:
        due = _next_attempt(at, delivery.attempts)
        if due is None:
            delivery.state = "failed"
            delivery.next_attempt_at = None
            report.failed += 1
            outcome = "failed"
        else:
            delivery.next_attempt_at = due
            report.retrying += 1
            outcome = "retrying"
    db.commit()
    metrics.WEBHOOK_DELIVERIES.labels(outcome=outcome).inc()


def _disable_gone(db: Session, delivery: WebhookDelivery) -> None:
    endpoint = db.get(WebhookEndpoint, delivery.endpoint_id)
    if endpoint is None or not endpoint.enabled:
        return
    endpoint.enabled = False
    audit.record(
        db,
        SYSTEM,
        "webhook_endpoint.disabled",
        target=f"webhook_endpoint:{endpoint.id}",
        details={"reason": "410 Gone", "delivery_id": delivery.id},
    )
    log.warning("webhook endpoint %s answered 410 Gone: disabled", endpoint.id)


def _renew(db: Session, delivery_id: int, owner: str, now: datetime) -> bool:
    """Extend this runner's lease on a claimed delivery just before trying it; False when it is no longer this
    runner's: a receiver that hung past the lease held this runner up, and another runner took the delivery over
    (and may have delivered it already). The claim covered a batch, tried one by one, each try up to ``TIMEOUT``."""
    d = WebhookDelivery
    moved = db.execute(
        update(d)
        .where(d.id == delivery_id, d.state == "pending", d.lease_owner == owner)
        .values(lease_until=now + LEASE)
        .execution_options(synchronize_session=False)
    )
    db.commit()
    return getattr(moved, "rowcount", 0) == 1


def _release(db: Session, delivery_id: int, owner: str) -> None:
    """Give a claimed delivery back untried (its endpoint was disabled during this run)."""
    d = WebhookDelivery
    db.execute(
        update(d)
        .where(d.id == delivery_id, d.lease_owner == owner)
        .values(lease_owner=None, lease_until=None)
        .execution_options(synchronize_session=False)
    )
    db.commit()


def purge_finished(db: Session, older_than: timedelta, *, now: datetime | None = None) -> int:
    """Delete events older than ``older_than`` none of whose deliveries is still pending, with their deliveries
    and attempt log, but each account's latest state event (the history ``account.recovered`` is told from);
    commits and audits the count. Returns how many events went."""
    cutoff = (now or utcnow()) - older_than
    pending = exists().where(WebhookDelivery.event_id == WebhookEvent.id, WebhookDelivery.state == "pending")
    old = select(WebhookEvent.id).where(
        WebhookEvent.created_at < cutoff, ~pending, WebhookEvent.id.not_in(last_states().scalar_subquery())
    )
    ids = list(db.execute(old).scalars())
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        deliveries = select(WebhookDelivery.id).where(WebhookDelivery.event_id.in_(chunk))
        db.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(deliveries)))
        db.execute(delete(WebhookDelivery).where(WebhookDelivery.event_id.in_(chunk)))
        db.execute(delete(WebhookEvent).where(WebhookEvent.id.in_(chunk)))
    if ids:
        audit.record(
            db, SYSTEM, "webhook_events.purged", details={"events": len(ids), "older_than_days": older_than.days}
        )
    db.commit()
    return len(ids)


def deliver_due(
    db: Session, client: OutboundClient, cipher: Cipher, *, now: datetime | None = None, limit: int = 500
) -> DeliveryReport:
    """Send every due delivery (at most ``limit`` tries); commits. ``now`` lets tests and the CLI move time."""
    owner = new_owner()
    report = DeliveryReport()
    cache: dict[int, tuple[Webhook, ...]] = {}  # this run's signers, by endpoint (never kept beyond it)
    signed: dict[int, int] = {}
    tries = 0
    while tries < limit:
        at = now or utcnow()
        ids = _claim(db, _due_ids(db, at, min(50, limit - tries)), owner, at)
        if not ids:
            break
        for delivery_id in ids:
            tries += 1
            delivery = db.get(WebhookDelivery, delivery_id)
            if delivery is None:
                continue
            endpoint_id = delivery.endpoint_id
            if endpoint_id in report.disabled:  # answered 410 Gone earlier in this run
                _release(db, delivery_id, owner)
                continue
            if not _renew(db, delivery_id, owner, now or utcnow()):
                continue
            started = time.monotonic()
            result = _send(db, client, cipher, delivery, cache)
            duration = int((time.monotonic() - started) * 1000)
            _finish(db, delivery_id, owner, result, at, duration, report)
            signed[endpoint_id] = signed.get(endpoint_id, 0) + 1
    # Every read of a signing secret is audited: one event per endpoint per run (not per delivery, which would
    # let a backlog flood the audit chain), naming how many tries it signed.
    for endpoint_id in cache:
        audit.record(
            db,
            SYSTEM,
            "webhook_endpoint.secret_used",
            target=f"webhook_endpoint:{endpoint_id}",
            details={"tries": signed.get(endpoint_id, 0)},
        )
    if cache:
        db.commit()
    return report


def delivery_client(settings: Settings) -> OutboundClient:
    """The guarded client for deliveries: one try per request (the schedule above is the retry policy,
    and every try is logged), the deployment's outbound allow-list and timeout."""
    return OutboundClient(allow=settings.outbound_allow, timeout=min(settings.outbound_timeout, TIMEOUT), retries=0)
