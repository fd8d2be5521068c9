"""Webhook events into the durable outbox, in the caller's transaction (the caller commits or rolls back).

Where events come from
----------------------
Every change a webhook reports is already audited by the service that makes it, in the same transaction
(app.audit.record). So :func:`from_audit`, called by ``record``, turns the audited actions listed in
:data:`AUDIT_EVENTS` into events: one table, and no face (console, CLI, API, job) can make the change
without the event. The token refresh job's hot path does not audit every run; it calls :func:`emit`
itself for the two state changes it owns (``account.refresh_failed`` and ``account.recovered``).

What an event carries
---------------------
Ids and states only, read from the row it is about (an account's status and error code, a user's
``active`` flag). Never a secret, never an audit detail (those are the audit log's business).

An event row is kept even when no endpoint wants it: it is the history that tells "recovered" from a
plain refresh, and it lets an endpoint registered later see what it missed in the log. The purge of old
events (app.jobs.webhooks) keeps each account's latest state event for the first reason.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Select, func, insert, select
from sqlalchemy.orm import Session

from app.i18n import N_
from app.models.accounts import ConnectedAccount
from app.models.base import utcnow
from app.models.providers import ProviderConfig
from app.models.users import User
from app.models.webhooks import WebhookDelivery, WebhookEndpoint, WebhookEvent

__all__ = ["AUDIT_EVENTS", "EVENT_TYPES", "emit", "emit_for", "emit_state", "from_audit", "last_states", "payload"]


@dataclass(frozen=True)
class EventType:
    name: str
    description: str


# The closed list an endpoint may subscribe to (the console's checkboxes, the API's enum, the CLI's choices).
EVENT_TYPES: Final[tuple[EventType, ...]] = (
    EventType("account.connected", N_("A connected account was added or reconnected.")),
    EventType("account.consent_required", N_("The provider withdrew consent: the owner must reconnect.")),
    EventType("account.refresh_failed", N_("Refreshing the account's token failed (it will be retried).")),
    EventType("account.recovered", N_("A refresh succeeded again after failures.")),
    EventType("account.secret_replaced", N_("The account's key or password was set or replaced.")),
    EventType("account.deleted", N_("The account was disconnected or deleted.")),
    EventType("session.revoked", N_("One or all sign-in sessions of a user were ended.")),
    EventType("user.created", N_("A user was created (invite, sign-up, admin, CLI, first OAuth sign-in).")),
    EventType("user.disabled", N_("A user was disabled.")),
    EventType("provider_config.changed", N_("A provider config was created, changed, enabled, disabled or deleted.")),
)
EVENT_NAMES: Final[frozenset[str]] = frozenset(t.name for t in EVENT_TYPES)

# Audited action -> event type (successful outcomes; ``session.revoke`` is also audited as "denied" when a
# session is ended for skipping its second factor, which is still a revoked session).
AUDIT_EVENTS: Final[Mapping[str, str]] = {
    "account.create": "account.connected",
    "connected_account.connect": "account.connected",
    "connected_account.reconnect": "account.connected",
    "connected_account.consent_required": "account.consent_required",
    "account.secret.set": "account.secret_replaced",
    "account.secret.replace": "account.secret_replaced",
    "account.secret.rollback": "account.secret_replaced",
    "account.delete": "account.deleted",
    "connected_account.disconnect": "account.deleted",
    "session.revoke": "session.revoked",
    "session.revoked": "session.revoked",
    "session.revoked_all": "session.revoked",
    "user.create": "user.created",
    "user.disable": "user.disabled",
    "provider_config.create": "provider_config.changed",
    "provider_config.update": "provider_config.changed",
    "provider_config.enable": "provider_config.changed",
    "provider_config.disable": "provider_config.changed",
    "provider_config.delete": "provider_config.changed",
}
# "connected_account.refresh" (the API's "refresh now") is mapped by outcome in from_audit.
_REFRESH_ACTION: Final = "connected_account.refresh"
_FAILED_STATES: Final = frozenset({"account.refresh_failed", "account.consent_required"})
_ACCOUNT_STATE_EVENTS: Final = (
    "account.connected",
    "account.consent_required",
    "account.refresh_failed",
    "account.recovered",
)
_SUBJECT_KINDS: Final = frozenset({"connected_account", "user", "provider_config"})


def _subject(target: str) -> tuple[str, int] | None:
    kind, _, raw = target.partition(":")
    if kind not in _SUBJECT_KINDS or not raw.isdigit():
        return None
    return kind, int(raw)


def _account_data(db: Session, account_id: int) -> dict[str, Any]:
    ca = ConnectedAccount
    row = db.execute(
        select(ca.provider_config_id, ca.user_id, ca.status, ca.last_error_code, ProviderConfig.provider_type)
        .join(ProviderConfig, ProviderConfig.id == ca.provider_config_id)
        .where(ca.id == account_id)
    ).first()
    if row is None:
        return {"account_id": account_id, "status": "deleted"}
    return {
        "account_id": account_id,
        "provider_config_id": row.provider_config_id,
        "provider_type": row.provider_type,
        "user_id": row.user_id,
        "status": row.status,
        "error_code": row.last_error_code,
    }


def _user_data(db: Session, user_id: int) -> dict[str, Any]:
    row = db.execute(select(User.role, User.is_active).where(User.id == user_id)).first()
    if row is None:
        return {"user_id": user_id, "active": False, "deleted": True}
    return {"user_id": user_id, "role": row.role, "active": row.is_active}


def _config_data(db: Session, config_id: int) -> dict[str, Any]:
    row = db.execute(
        select(ProviderConfig.provider_type, ProviderConfig.enabled).where(ProviderConfig.id == config_id)
    ).first()
    if row is None:
        return {"provider_config_id": config_id, "deleted": True}
    return {"provider_config_id": config_id, "provider_type": row.provider_type, "enabled": row.enabled}


def _data_for(db: Session, kind: str, ident: int) -> dict[str, Any]:
    if kind == "connected_account":
        return _account_data(db, ident)
    if kind == "user":
        return _user_data(db, ident)
    return _config_data(db, ident)


def _last_account_state(db: Session, subject: str) -> str | None:
    return db.execute(
        select(WebhookEvent.type)
        .where(WebhookEvent.subject == subject, WebhookEvent.type.in_(_ACCOUNT_STATE_EVENTS))
        .order_by(WebhookEvent.id.desc())
        .limit(1)
    ).scalar()


def last_states() -> Select[int]:
    """The ids of each account's latest state event: what :func:`emit_state` compares with, which a purge of
    old events must keep (app.jobs.webhooks.purge_finished)."""
    return (
        select(func.max(WebhookEvent.id))
        .where(WebhookEvent.type.in_(_ACCOUNT_STATE_EVENTS))
        .group_by(WebhookEvent.subject)
    )


def emit(db: Session, event_type: str, subject: str, data: Mapping[str, Any]) -> str:
    """Write one event and a pending delivery for every enabled endpoint subscribed to its type; returns the
    event's id. Core INSERTs (as app.audit does): this runs inside every audited change that is an event."""
    if event_type not in EVENT_NAMES:
        raise ValueError(f"unknown webhook event type {event_type!r}")
    now = utcnow()
    public_id = "msg_" + secrets.token_hex(16)
    event_id = db.execute(
        insert(WebhookEvent)
        .values(public_id=public_id, type=event_type, subject=subject, data=dict(data), created_at=now)
        .returning(WebhookEvent.id)
    ).scalar_one()
    endpoints = db.execute(select(WebhookEndpoint.id, WebhookEndpoint.events).where(WebhookEndpoint.enabled)).all()
    rows = [
        {
            "event_id": event_id,
            "endpoint_id": endpoint_id,
            "subject": subject,
            "state": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "started_at": now,
            "created_at": now,
        }
        for endpoint_id, wanted in endpoints
        if event_type in (wanted or [])
    ]
    if rows:
        db.execute(insert(WebhookDelivery), rows)
    return public_id


def emit_for(db: Session, event_type: str, target: str, **extra: Any) -> str | None:
    """:func:`emit` with the data read from the row ``target`` (``connected_account:12``) names."""
    parsed = _subject(target)
    if parsed is None:
        return None
    data = _data_for(db, *parsed)
    data.update(extra)
    return emit(db, event_type, target, data)


def emit_state(db: Session, event_type: str, target: str) -> str | None:
    """An account state change, once: nothing when the account's last state event already says so (a job
    retrying a failing refresh, or the API's "refresh now" beside it, reports the failure once)."""
    if _last_account_state(db, target) == event_type:
        return None
    if event_type == "account.recovered" and _last_account_state(db, target) not in _FAILED_STATES:
        return None
    return emit_for(db, event_type, target)


def emits_for(action: str) -> bool:
    """Whether an audited ``action`` can emit a webhook event (:func:`from_audit` then needs the session)."""
    return action == _REFRESH_ACTION or action in AUDIT_EVENTS


def from_audit(db: Session, action: str, target: str, outcome: str, details: Mapping[str, Any]) -> None:
    """Called by app.audit.record for every audited action; most are not webhook events."""
    if action == _REFRESH_ACTION:
        if outcome in ("failure", "success"):
            emit_state(db, "account.refresh_failed" if outcome == "failure" else "account.recovered", target)
        return
    event_type = AUDIT_EVENTS.get(action)
    if event_type is None or outcome == "failure":
        return
    if outcome == "denied" and action != "session.revoke":
        return
    if event_type == "provider_config.changed":
        emit_for(db, event_type, target, change=action.rpartition(".")[2])
    elif event_type == "account.deleted":
        # Audited just before the row goes: its ids are still there, its state is what the event says.
        emit_for(db, event_type, target, status="deleted")
    elif event_type == "session.revoked":
        emit_for(db, event_type, target, all_sessions=action == "session.revoked_all")
    else:
        emit_for(db, event_type, target)


def payload(event: WebhookEvent) -> dict[str, Any]:
    """The JSON body of every delivery of ``event`` (Standard Webhooks' suggested envelope)."""
    return {
        "id": event.public_id,
        "type": event.type,
        "timestamp": event.created_at.isoformat().replace("+00:00", "Z"),
        "data": event.data,
    }
