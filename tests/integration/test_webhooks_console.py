"""Webhook endpoints in the console and the CLI: the secret shown once, field errors on the form, the delivery
log with response codes and the redeliver button — against the receiver that verifies signatures."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.extensions import get_cipher
from app.jobs.webhooks import deliver_due, delivery_client
from app.models.webhooks import WebhookDelivery
from tests.conftest import UserFactory, csrf_token, sign_in
from tests.support.accounts import make_config
from tests.support.webhook_receiver import WebhookReceiver

SECRET_FIELD = re.compile(r'id="signing-secret"[^>]*value="(whsec_[A-Za-z0-9+/=]+)"')


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver().start()
    yield hook
    hook.stop()


def test_admin_registers_an_endpoint_reads_the_log_and_redelivers(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory, receiver: WebhookReceiver
) -> None:
    make_user("root@example.com", role="admin")
    assert sign_in(client, "root@example.com").status_code == 302
    page = client.get("/admin/webhooks/").get_data(as_text=True)
    assert "No webhook endpoints yet." in page and "account.consent_required" in page
    # An internal address is blamed on the URL field; nothing is registered.
    form = {
        "csrf_token": csrf_token(client, "/admin/webhooks/"),
        "url": "http://10.0.0.7/hook",
        "events": ["user.created"],
    }
    refused = client.post("/admin/webhooks/", data=form)
    assert refused.status_code == 422
    assert 'data-field="url"' in refused.get_data(as_text=True)
    form = {**form, "url": receiver.url, "events": ["provider_config.changed"], "enabled": "y"}
    created = client.post("/admin/webhooks/", data=form)
    assert created.status_code == 200
    match = SECRET_FIELD.search(created.get_data(as_text=True))
    assert match and "cannot be shown again" in created.get_data(as_text=True)
    secret = html.unescape(match.group(1))
    receiver.secrets = [secret]
    listing = client.get("/admin/webhooks/").get_data(as_text=True)
    assert receiver.url in listing and secret not in listing

    make_config(db, get_cipher(app), app.extensions["ami_settings"], "openai", {})
    receiver.answer = 500
    sender = delivery_client(app.extensions["ami_settings"])
    try:
        deliver_due(db, sender, get_cipher(app))
        endpoint_page = "/admin/webhooks/1"
        detail = client.get(endpoint_page).get_data(as_text=True)
        assert "provider_config.changed" in detail and ">500<" in detail and secret not in detail
        receiver.answer = 200
        delivery = db.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)).first()
        assert delivery is not None
        token = csrf_token(client, endpoint_page)
        again = client.post(f"{endpoint_page}/deliveries/{delivery.id}/redeliver", data={"csrf_token": token})
        assert again.status_code == 302
        for _ in range(3):
            deliver_due(db, sender, get_cipher(app))
    finally:
        sender.close()
    detail = client.get(endpoint_page).get_data(as_text=True)
    assert ">500<" in detail and ">200<" in detail and "delivered" in detail
    assert len(receiver.verified) == 2  # provider_config create + enable

    # Rotate: a new secret, shown once, the old one still signing for the overlap.
    token = csrf_token(client, endpoint_page)
    rotated = client.post(f"{endpoint_page}/rotate", data={"csrf_token": token, "overlap_hours": "2"})
    text = rotated.get_data(as_text=True)
    new = SECRET_FIELD.search(text)
    assert rotated.status_code == 200 and new and html.unescape(new.group(1)) != secret
    assert "keeps signing too until" in text


def test_cli_adds_lists_logs_and_removes(app: Flask, receiver: WebhookReceiver) -> None:
    runner = app.test_cli_runner()
    added = runner.invoke(args=["webhooks", "add", receiver.url, "--event", "user.created", "--event", "user.disabled"])
    assert added.exit_code == 0, added.output
    assert re.search(r"signing secret \(shown once; give it to the receiver\): whsec_\S+", added.output)
    listed = runner.invoke(args=["webhooks", "list"])
    assert receiver.url in listed.output and "whsec_" not in listed.output
    refused = runner.invoke(args=["webhooks", "add", "http://192.168.1.1/", "--event", "user.created"])
    assert refused.exit_code == 1 and "Outbound address not allowed" in refused.output
    rotated = runner.invoke(args=["webhooks", "rotate-secret", "1", "--overlap-hours", "0"])
    assert rotated.exit_code == 0 and "whsec_" in rotated.output
    delivered = runner.invoke(args=["webhooks", "deliver"])
    assert delivered.exit_code == 0 and "0 delivered" in delivered.output
    assert runner.invoke(args=["webhooks", "remove", "1"]).exit_code == 0
    assert "no webhook endpoints" in runner.invoke(args=["webhooks", "list"]).output
