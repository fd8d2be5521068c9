"""Signed webhooks end to end: real services make the changes, the outbox holds the events, the delivery job
sends them through the guarded client to a real receiver that verifies each signature with the
`standardwebhooks` library. The receiver is down, then failing, then back: every event arrives, in order
per account, with its stable id; a rotated secret signs beside the old one during the overlap."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.audit import AuditContext
from app.auth import user_admin
from app.connectors import accounts
from app.connectors.removal import delete_account
from app.errors import AppError
from app.extensions import get_cipher, get_database
from app.jobs.webhooks import LEASE, RETRY_DELAYS, deliver_due, delivery_client, purge_finished
from app.models import AuditEvent, ConnectedAccount, User
from app.models.base import utcnow
from app.models.webhooks import WebhookAttempt, WebhookDelivery, WebhookEvent
from app.net import OutboundClient, get_client
from app.providers import configs
from app.services import webhooks
from app.vault import Secret
from app.webhook_events import EVENT_TYPES, emit_state
from tests.conftest import UserFactory
from tests.support.accounts import CTX, make_account, make_config
from tests.support.hold import connections_while_held
from tests.support.vendors.openai import OpenAI
from tests.support.webhook_receiver import WebhookReceiver

pytest_plugins = ("tests.support.vendor_fixtures",)

ALL = [t.name for t in EVENT_TYPES]


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver().start()
    yield hook
    hook.stop()


@pytest.fixture
def sender(app: Flask) -> Iterator[OutboundClient]:
    client = delivery_client(app.extensions["ami_settings"])
    yield client
    client.close()


def _register(app: Flask, db: Session, receiver: WebhookReceiver, events: list[str] = ALL) -> webhooks.NewSecret:
    made = webhooks.create_endpoint(
        db, app.extensions["ami_settings"], get_cipher(app), CTX, url=receiver.url, events=events
    )
    db.commit()
    receiver.secrets = [made.value]
    return made


def _openai_account(app: Flask, db: Session, vendor: OpenAI, name: str = "OpenAI") -> tuple[ConnectedAccount, str]:
    cfg = make_config(db, get_cipher(app), app.extensions["ami_settings"], "openai", {}, name=name)
    account = make_account(db, cfg, {"base_url": vendor.url}, label="OpenAI prod")
    key = vendor.add_key()
    with app.app_context():
        accounts.save_secrets(
            db, get_cipher(app), get_client(app), app.extensions["ami_settings"], CTX, account, {"api_key": Secret(key)}
        )
    db.commit()
    return account, key


OUTCOMES = ("delivered", "retrying", "failed")


def test_every_event_arrives_signed_and_in_order_per_account_after_the_receiver_was_down(
    app: Flask, db: Session, receiver: WebhookReceiver, sender: OutboundClient, openai_standin: OpenAI
) -> None:
    cipher = get_cipher(app)
    _register(app, db, receiver)
    receiver.stop()  # down: the port is closed
    account, key = _openai_account(app, db, openai_standin)
    second, _ = _openai_account(app, db, openai_standin, name="OpenAI 2")
    with app.app_context():
        delete_account(db, cipher, get_client(app), CTX, second, skip_revoke=True)
    db.commit()
    t0 = utcnow()
    tries = {o: REGISTRY.get_sample_value("ami_auth_webhook_deliveries_total", {"outcome": o}) or 0.0 for o in OUTCOMES}
    report = deliver_due(db, sender, cipher, now=t0)
    reports = [report]
    # One try per subject's head of line: later events of the same account wait behind the first.
    assert report.delivered == 0 and report.retrying >= 2
    assert set(report.statuses) == {None}
    refused = db.scalars(select(WebhookAttempt)).all()
    assert all(a.status is None and a.error and "provider_unreachable" in a.error for a in refused)

    # Back, but failing: the 500 is logged and the schedule moves on.
    receiver.answer = 500
    receiver.start()
    report = deliver_due(db, sender, cipher, now=t0 + RETRY_DELAYS[0])
    reports.append(report)
    assert report.delivered == 0 and 500 in report.statuses

    # Healthy again: everything that was queued arrives, each account's events in the order they happened.
    receiver.answer = 200
    report = deliver_due(db, sender, cipher, now=t0 + RETRY_DELAYS[0] + RETRY_DELAYS[1])
    reports.append(report)
    assert report.failed == 0
    # /metrics counts every try by what became of its delivery.
    counted = {
        o: (REGISTRY.get_sample_value("ami_auth_webhook_deliveries_total", {"outcome": o}) or 0.0) - tries[o]
        for o in OUTCOMES
    }
    assert counted == {o: sum(getattr(r, o) for r in reports) for o in OUTCOMES}
    assert counted["delivered"] > 0 and counted["retrying"] > 0
    db.expire_all()
    assert db.scalar(select(WebhookDelivery).where(WebhookDelivery.state != "delivered")) is None
    events = db.scalars(select(WebhookEvent).order_by(WebhookEvent.id)).all()
    assert sorted(receiver.ids()) == sorted(e.public_id for e in events)
    assert receiver.rejected == []
    for subject in {e.subject for e in events}:
        sent = [e.public_id for e in events if e.subject == subject]
        got = [i for i in receiver.ids() if i in sent]
        assert got == sent, subject
    by_type: dict[str, dict[str, Any]] = {}
    for r in receiver.verified:
        by_type.setdefault(r.body["type"], r.body)  # the first of each type
    assert by_type["account.connected"]["data"]["account_id"] == account.id
    assert by_type["account.connected"]["data"]["provider_type"] == "openai"
    assert by_type["account.secret_replaced"]["data"]["status"] == "active"
    deleted = by_type["account.deleted"]["data"]
    assert (deleted["account_id"], deleted["status"], deleted["provider_type"]) == (second.id, "deleted", "openai")
    assert by_type["provider_config.changed"]["data"]["change"] == "create"
    # Ids and states only: the key appears in no body.
    assert all(key not in r.raw.decode() for r in receiver.verified)
    # The log keeps every try of the first account event: refused, 500, then 200.
    first = db.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)).first()
    assert first is not None
    codes = [a.status for a in db.scalars(select(WebhookAttempt).where(WebhookAttempt.delivery_id == first.id))]
    assert codes == [None, 500, 200]


def test_user_session_and_config_changes_from_the_services_become_events(
    app: Flask, db: Session, receiver: WebhookReceiver, sender: OutboundClient, make_user: UserFactory
) -> None:
    settings = app.extensions["ami_settings"]
    _register(app, db, receiver, ["user.created", "user.disabled", "session.revoked", "provider_config.changed"])
    admin = make_user("admin@example.com", role="admin")
    with app.app_context():
        created = user_admin.create_user(
            db,
            settings,
            CTX,
            email="new@example.com",
            role="member",
            display_name="New",
            metadata="",
            mode="password",
            password="a long enough password 1",
        )
        user = db.get(User, created.user.id)
        assert user is not None
        user_admin.revoke_all_sessions(db, CTX, user)
        user_admin.set_active(db, CTX, db.get(User, admin.id), user, False)
        cfg = make_config(db, get_cipher(app), settings, "openai", {})
        configs.set_enabled(db, CTX, cfg, False)
        db.commit()
    deliver_due(db, sender, get_cipher(app))
    types = [r.body["type"] for r in receiver.verified]
    assert types.count("user.created") == 1  # make_user's admin is made below the audited service
    assert "session.revoked" in types and "user.disabled" in types
    disabled = next(r.body for r in receiver.verified if r.body["type"] == "user.disabled")
    assert disabled["data"] == {"user_id": user.id, "role": "member", "active": False}
    changes = [r.body["data"]["change"] for r in receiver.verified if r.body["type"] == "provider_config.changed"]
    assert changes[-1] == "disable"


def test_a_rolled_back_change_sends_nothing(app: Flask, db: Session, receiver: WebhookReceiver) -> None:
    _register(app, db, receiver, ["provider_config.changed"])
    settings = app.extensions["ami_settings"]
    from app.providers.registry import entry  # (test-local: only this test builds a config by hand)

    configs.create_config(db, get_cipher(app), settings, CTX, entry("openai"), "Never committed", {}, enabled=False)
    db.rollback()
    assert db.scalar(select(WebhookEvent)) is None


def test_rotation_signs_with_both_secrets_during_the_overlap_then_only_the_new_one(
    app: Flask, db: Session, receiver: WebhookReceiver, sender: OutboundClient
) -> None:
    cipher = get_cipher(app)
    made = _register(app, db, receiver, ["provider_config.changed"])
    old = made.value
    rotated = webhooks.rotate_secret(db, cipher, CTX, made.endpoint, overlap=timedelta(hours=1))
    db.commit()
    assert rotated.value != old and "whsec_" in rotated.value and old not in repr(rotated)
    from app.providers.registry import entry  # (test-local: one event, a config made disabled)

    configs.create_config(db, cipher, app.extensions["ami_settings"], CTX, entry("openai"), "One", {}, enabled=False)
    db.commit()
    # A receiver still on the old secret verifies, and so does one already on the new one.
    receiver.secrets = [old]
    deliver_due(db, sender, cipher)
    assert len(receiver.verified) == 1 and len(receiver.verified[0].signature.split(" ")) == 2
    event_id = receiver.verified[0].webhook_id
    delivery = db.scalars(select(WebhookDelivery)).one()
    receiver.secrets = [rotated.value]
    webhooks.redeliver(db, CTX, delivery)
    db.commit()
    deliver_due(db, sender, cipher)
    assert receiver.ids() == [event_id, event_id]  # the same stable id
    # Rotating with no overlap: the old secret no longer verifies.
    final = webhooks.rotate_secret(db, cipher, CTX, made.endpoint, overlap=timedelta(0))
    db.commit()
    webhooks.redeliver(db, CTX, delivery)
    db.commit()
    deliver_due(db, sender, cipher)
    assert receiver.rejected == [event_id]
    receiver.secrets = [final.value]
    deliver_due(db, sender, cipher, now=utcnow() + RETRY_DELAYS[0])
    assert receiver.ids() == [event_id] * 3
    actions = [e.action for e in db.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    assert actions.count("webhook_endpoint.secret_rotate") == 2 and "webhook_delivery.redeliver" in actions
    assert all(final.value not in json.dumps(e.details) for e in db.scalars(select(AuditEvent)))


def test_a_delivery_gives_up_after_the_schedule_and_stops_holding_the_line(
    app: Flask, db: Session, receiver: WebhookReceiver, sender: OutboundClient
) -> None:
    cipher = get_cipher(app)
    _register(app, db, receiver, ["provider_config.changed"])
    receiver.answer = 503
    cfg = make_config(db, cipher, app.extensions["ami_settings"], "openai", {})
    configs.set_enabled(db, CTX, cfg, False)
    db.commit()
    t = utcnow()
    for delay in (timedelta(0), *RETRY_DELAYS):
        t += delay
        deliver_due(db, sender, cipher, now=t)
    db.expire_all()
    first, *_, last = db.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)).all()
    assert (first.state, first.attempts, first.last_status) == ("failed", len(RETRY_DELAYS) + 1, 503)
    assert t - first.started_at >= timedelta(hours=24)
    # Later events of the same config were held back until the first gave up, then tried in their turn.
    assert last.state == "pending" and last.attempts == 0
    deliver_due(db, sender, cipher, now=t + timedelta(hours=1))
    db.expire_all()
    assert last.attempts == 0  # the second event is the head of the line now, not the third
    receiver.answer = 200
    for _ in range(3):
        deliver_due(db, sender, cipher, now=t + timedelta(hours=2))
    assert [r.body["data"]["change"] for r in receiver.verified] == ["enable", "disable"]


@pytest.mark.parametrize("url", ["http://10.0.0.5/hook", "http://169.254.169.254/latest", "ftp://127.0.0.1/x", "nope"])
def test_a_target_the_outbound_guard_refuses_is_blamed_on_the_url_field(app: Flask, db: Session, url: str) -> None:
    with pytest.raises(AppError) as caught:
        webhooks.create_endpoint(
            db, app.extensions["ami_settings"], get_cipher(app), CTX, url=url, events=["user.created"]
        )
    assert caught.value.code == "validation_failed" and "url" in caught.value.fields
    db.rollback()


def test_unknown_or_no_events_are_refused(app: Flask, db: Session, receiver: WebhookReceiver) -> None:
    settings, cipher = app.extensions["ami_settings"], get_cipher(app)
    for events in ([], ["user.exploded"]):
        with pytest.raises(AppError) as caught:
            webhooks.create_endpoint(db, settings, cipher, AuditContext(actor="t"), url=receiver.url, events=events)
        assert "events" in caught.value.fields


def test_refresh_failures_are_reported_once_and_recovery_only_after_a_failure(
    app: Flask, db: Session, openai_standin: OpenAI
) -> None:
    """What the refresh job (app.oauth.renewal) and the API's "refresh now" call: one refresh_failed per run of
    failures, and recovered only when the last state event was a failure."""
    from app import webhook_events  # (test-local: the job's entry points, called as the job calls them)

    account, _ = _openai_account(app, db, openai_standin)
    target = f"connected_account:{account.id}"
    assert webhook_events.emit_state(db, "account.recovered", target) is None  # nothing failed yet
    first = webhook_events.emit_state(db, "account.refresh_failed", target)
    assert first is not None
    assert webhook_events.emit_state(db, "account.refresh_failed", target) is None  # the retry fails again
    assert webhook_events.emit_state(db, "account.recovered", target) is not None
    assert webhook_events.emit_state(db, "account.recovered", target) is None
    db.commit()
    types = [e.type for e in db.scalars(select(WebhookEvent).where(WebhookEvent.subject == target))]
    assert types == [
        "account.connected",
        "account.secret_replaced",
        "account.refresh_failed",
        "account.recovered",
    ]


def test_the_in_app_scheduler_sends_due_deliveries(app: Flask, db: Session, receiver: WebhookReceiver) -> None:
    from app.jobs.scheduler import RefreshScheduler  # (test-local: only this test drives the scheduler's tick)

    _register(app, db, receiver, ["provider_config.changed"])
    make_config(db, get_cipher(app), app.extensions["ami_settings"], "openai", {})
    RefreshScheduler(app).run_once()  # one tick, in this thread: the refresh, then the deliveries
    assert [r.body["data"]["change"] for r in receiver.verified] == ["create", "enable"]


def test_a_runner_whose_lease_ran_out_does_not_send_what_another_runner_took_over(
    app: Flask, db: Session, receiver: WebhookReceiver, sender: OutboundClient
) -> None:
    """Several hosts run the job. A runner held up by a receiver that hangs past the claims' lease finds, when it
    comes back, that another runner took over and delivered the rest of its batch: it does not send those again."""
    cipher, settings = get_cipher(app), app.extensions["ami_settings"]
    _register(app, db, receiver, ["provider_config.changed"])
    make_config(db, cipher, settings, "openai", {}, name="First")
    make_config(db, cipher, settings, "anthropic", {}, name="Second")
    events = db.scalar(select(func.count()).select_from(WebhookDelivery))  # each config's creation and enabling
    t0 = utcnow()
    receiver.hold.next()
    reports: list[Any] = []
    with Session(db.get_bind()) as own:
        first = threading.Thread(target=lambda: reports.append(deliver_due(own, sender, cipher, now=t0)))
        first.start()
        try:
            receiver.hold.wait_held()  # the first runner waits on its first delivery, with each config's first claimed
            later = deliver_due(db, sender, cipher, now=t0 + LEASE + timedelta(seconds=1))
            assert later.delivered == events  # the leases ran out: another runner delivers every event
        finally:
            receiver.hold.release()
            first.join(timeout=30)
    ids = receiver.ids()
    assert len(set(ids)) == events
    # The held request was already on its way when the other runner took over (at least once); nothing else came
    # twice.
    assert sorted(ids.count(i) for i in set(ids)) == [1] * (events - 1) + [2]
    # The first runner records nothing: the deliveries' outcomes are the other runner's, which held them by then.
    assert reports[0].statuses == [] and reports[0].delivered == 0


def test_a_runner_waiting_on_a_receiver_holds_no_database_connection(
    app: Flask, db: Session, receiver: WebhookReceiver, sender: OutboundClient
) -> None:
    """A receiver may take 15 s to answer, for each of up to 500 deliveries a run: meanwhile the runner keeps no
    transaction open, so no connection of the pool the requests share is tied up."""
    _register(app, db, receiver, ["provider_config.changed"])
    make_config(db, get_cipher(app), app.extensions["ami_settings"], "openai", {})
    with Session(db.get_bind()) as own:
        idle, held, report = connections_while_held(
            get_database(app).engine, receiver.hold, lambda: deliver_due(own, sender, get_cipher(app))
        )
    assert held == idle
    assert report.delivered >= 1


def test_an_endpoint_that_answers_410_gone_is_disabled_and_its_other_deliveries_wait(
    app: Flask, db: Session, receiver: WebhookReceiver, sender: OutboundClient
) -> None:
    cipher = get_cipher(app)
    made = _register(app, db, receiver, ["provider_config.changed"])
    receiver.answer = 410
    cfg = make_config(db, cipher, app.extensions["ami_settings"], "openai", {})
    other = make_config(db, cipher, app.extensions["ami_settings"], "anthropic", {}, name="Anthropic")
    db.commit()
    report = deliver_due(db, sender, cipher)
    assert report.disabled == {made.endpoint.id}
    assert "1 endpoint(s) disabled (410 Gone)" in report.summary()
    db.expire_all()
    endpoint = webhooks.get_endpoint(db, made.endpoint.id)
    assert endpoint.enabled is False
    deliveries = db.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)).all()
    # One try got the 410; the rest were never sent and wait for the endpoint to be enabled again.
    assert [(d.state, d.attempts) for d in deliveries].count(("failed", 1)) == 1
    assert all(d.state == "pending" and d.attempts == 0 and d.lease_owner is None for d in deliveries[1:])
    disabled = db.scalars(select(AuditEvent).where(AuditEvent.action == "webhook_endpoint.disabled")).all()
    assert [(e.actor, e.target, e.details["reason"]) for e in disabled] == [
        ("system:webhooks", f"webhook_endpoint:{endpoint.id}", "410 Gone")
    ]
    # The receiver is back: an admin enables the endpoint and the waiting events arrive, in order per config.
    receiver.answer = 200
    webhooks.update_endpoint(db, app.extensions["ami_settings"], CTX, endpoint, enabled=True)
    db.commit()
    deliver_due(db, sender, cipher)
    deliver_due(db, sender, cipher)
    got = [(r.body["data"]["provider_config_id"], r.body["data"]["change"]) for r in receiver.verified]
    assert [c for i, c in got if i == cfg.id] == ["enable"]  # "create" got the 410 and gave up
    assert [c for i, c in got if i == other.id] == ["create", "enable"]


def test_the_purge_deletes_finished_old_events_and_keeps_pending_ones_and_account_history(
    app: Flask, db: Session, receiver: WebhookReceiver, sender: OutboundClient
) -> None:
    cipher = get_cipher(app)
    _register(app, db, receiver, ["provider_config.changed"])
    make_config(db, cipher, app.extensions["ami_settings"], "openai", {})
    deliver_due(db, sender, cipher)  # delivered: finished
    receiver.answer = 503
    make_config(db, cipher, app.extensions["ami_settings"], "anthropic", {}, name="Anthropic")
    deliver_due(db, sender, cipher)  # still pending, to retry
    account = make_account(db, make_config(db, cipher, app.extensions["ami_settings"], "openai", {}, name="O2"), {})
    emit_state(db, "account.refresh_failed", f"connected_account:{account.id}")
    db.commit()
    before = db.scalars(select(func.count()).select_from(WebhookEvent)).one()
    assert purge_finished(db, timedelta(days=30)) == 0  # nothing is old yet
    later = utcnow() + timedelta(days=31)
    purged = purge_finished(db, timedelta(days=30), now=later)
    db.expire_all()
    left = db.scalars(select(WebhookEvent)).all()
    assert purged == before - len(left) and purged > 0
    # Kept: every event with a pending delivery, and the account's last state (what "recovered" is told from).
    pending = db.scalars(select(WebhookDelivery).where(WebhookDelivery.state == "pending")).all()
    assert {d.event_id for d in pending} <= {e.id for e in left}
    assert [e.type for e in left if e.subject == f"connected_account:{account.id}"] == ["account.refresh_failed"]
    assert (
        db.scalar(
            select(func.count())
            .select_from(WebhookAttempt)
            .where(~WebhookAttempt.delivery_id.in_(select(WebhookDelivery.id)))
        )
        == 0
    )
    emit_state(db, "account.recovered", f"connected_account:{account.id}")  # still told from the kept history
    db.commit()
    assert db.scalars(select(WebhookEvent.type).order_by(WebhookEvent.id.desc())).first() == "account.recovered"
    purged_audit = db.scalars(select(AuditEvent).where(AuditEvent.action == "webhook_events.purged")).all()
    assert [e.details["events"] for e in purged_audit] == [purged]


def test_the_purge_command_says_how_many_events_went(app: Flask, db: Session) -> None:
    result = app.test_cli_runner().invoke(args=["webhooks", "purge", "--older-than-days", "7"])
    assert result.exit_code == 0, result.output
    assert "webhooks: 0 finished event(s) older than 7 day(s) deleted" in result.output
    refused = app.test_cli_runner().invoke(args=["webhooks", "purge", "--older-than-days", "0"])
    assert refused.exit_code == 2
