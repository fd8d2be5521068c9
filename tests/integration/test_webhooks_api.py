"""Webhook endpoints through the JSON API and the CLI: scopes, the secret handed out once (create, rotate),
field errors, the delivery log with response codes, redeliver — against the verifying receiver."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api import tokens
from app.audit import AuditContext
from app.extensions import get_cipher
from app.jobs.webhooks import deliver_due, delivery_client
from app.models import AuditEvent
from tests.support.accounts import make_config
from tests.support.webhook_receiver import WebhookReceiver

PATH = "/api/account-manager/webhooks"


def _token(db: Session, *scopes: str) -> dict[str, str]:
    raw = tokens.create_token(db, AuditContext(actor="test"), name="CMS", scopes=list(scopes), created_by=None).raw
    db.commit()
    return {"Authorization": f"Bearer {raw}"}


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver().start()
    yield hook
    hook.stop()


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    error: dict[str, Any] = response.get_json()["error"]
    assert error["code"] == code
    return error


def test_register_deliver_read_the_log_and_redeliver_through_the_api(
    app: Flask, client: FlaskClient, db: Session, receiver: WebhookReceiver
) -> None:
    rw = _token(db, "webhooks:read", "webhooks:write")
    created = client.post(PATH, json={"url": receiver.url, "events": ["provider_config.changed"]}, headers=rw)
    assert created.status_code == 201, created.get_data(as_text=True)
    body = created.get_json()
    secret = body["signing_secret"]
    endpoint_id = body["endpoint"]["id"]
    assert created.headers["Location"] == f"{PATH}/{endpoint_id}"
    receiver.secrets = [secret]
    # The secret is never read back.
    listed = client.get(PATH, headers=rw).get_data(as_text=True)
    assert secret not in listed and secret not in client.get(f"{PATH}/{endpoint_id}", headers=rw).get_data(True)
    make_config(db, get_cipher(app), app.extensions["ami_settings"], "openai", {})
    receiver.answer = 500
    sender = delivery_client(app.extensions["ami_settings"])
    try:
        deliver_due(db, sender, get_cipher(app))
        log = client.get(f"{PATH}/{endpoint_id}/deliveries", headers=rw).get_json()["deliveries"]
        head = log[-1]
        assert head["state"] == "pending" and [a["status"] for a in head["log"]] == [500]
        assert head["event_type"] == "provider_config.changed" and head["event_id"].startswith("msg_")
        receiver.answer = 200
        again = client.post(f"{PATH}/{endpoint_id}/deliveries/{head['id']}/redeliver", headers=rw)
        assert again.status_code == 200 and again.get_json()["state"] == "pending"
        for _ in range(3):
            deliver_due(db, sender, get_cipher(app))
    finally:
        sender.close()
    log = client.get(f"{PATH}/{endpoint_id}/deliveries", headers=rw).get_json()["deliveries"]
    assert {d["state"] for d in log} == {"delivered"}
    assert [a["status"] for a in log[-1]["log"]] == [500, 200]
    assert receiver.ids()[0] == head["event_id"]
    # Rotation hands out a new secret, once; deliveries carry both signatures for the overlap.
    rotated = client.post(f"{PATH}/{endpoint_id}/rotate-secret", json={"overlap_hours": 2}, headers=rw)
    assert rotated.status_code == 200
    assert rotated.get_json()["signing_secret"] != secret and rotated.get_json()["endpoint"]["previous_secret_until"]
    # Changing and deleting.
    changed = client.patch(f"{PATH}/{endpoint_id}", json={"enabled": False, "description": "CMS"}, headers=rw)
    assert changed.status_code == 200 and changed.get_json()["enabled"] is False
    assert client.delete(f"{PATH}/{endpoint_id}", headers=rw).status_code == 204
    _error(client.get(f"{PATH}/{endpoint_id}", headers=rw), 404, "not_found")
    used = db.scalars(select(AuditEvent).where(AuditEvent.action == "webhook_endpoint.secret_used")).all()
    assert used and all(e.actor == "system:webhooks" and e.target == f"webhook_endpoint:{endpoint_id}" for e in used)
    events = db.scalars(
        select(AuditEvent).where(
            AuditEvent.action.like("webhook%"), AuditEvent.action != "webhook_endpoint.secret_used"
        )
    ).all()
    assert [e.action for e in events] == [
        "webhook_endpoint.create",
        "webhook_delivery.redeliver",
        "webhook_endpoint.secret_rotate",
        "webhook_endpoint.update",
        "webhook_endpoint.delete",
    ]
    assert all(secret not in json.dumps(e.details) for e in events)


def test_scopes_and_field_errors(app: Flask, client: FlaskClient, db: Session, receiver: WebhookReceiver) -> None:
    read_only = _token(db, "webhooks:read")
    _error(
        client.post(PATH, json={"url": receiver.url, "events": ["user.created"]}, headers=read_only),
        403,
        "permission_denied",
    )
    rw = _token(db, "webhooks:write")
    error = _error(
        client.post(PATH, json={"url": "http://10.1.2.3/x", "events": ["user.created"]}, headers=rw),
        422,
        "validation_failed",
    )
    assert "url" in error["fields"]
    error = _error(
        client.post(PATH, json={"url": receiver.url, "events": ["nope"]}, headers=rw), 422, "validation_failed"
    )
    assert "events" in error["fields"]
    error = _error(client.post(PATH, json={"url": receiver.url}, headers=rw), 422, "validation_failed")
    assert error["fields"] == {"events": "This field is required."}
