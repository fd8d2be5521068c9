"""Saving an API key while the vendor cannot be reached (issue 15): the dialog offers "save unverified" —
only for a vendor outage, only where the catalog entry allows it — the account shows "unverified", and
"Verify now" or the job verifies it once the vendor answers again."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import audit
from app.connectors.headers import OWNER
from app.extensions import get_cipher
from app.jobs.unverified import run_verify_unverified
from app.models import AuditEvent
from app.settings import Settings
from app.vault import get_secret, put_secret
from tests.conftest import UserFactory, make_settings, sign_in
from tests.support.accounts import CTX, csrf_of, make_account, make_config, post_dialog, reload
from tests.support.vendors.generic import GenericApi
from tests.support.vendors.huggingface import HuggingFace

pytest_plugins = ("tests.support.vendor_fixtures",)

OFFER = "Save it unverified"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url, AMI_AUTH_OUTBOUND_TIMEOUT="2", AMI_AUTH_OUTBOUND_RETRIES="0")


def _admin(client: FlaskClient, make_user: UserFactory) -> None:
    make_user("admin@example.com", role="admin")
    assert sign_in(client, "admin@example.com").status_code == 302


def test_an_hf_token_saved_unverified_during_an_outage_is_verified_later(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory, huggingface_standin: HuggingFace
) -> None:
    cfg = make_config(db, get_cipher(app), app.extensions["ami_settings"], "huggingface", {})
    account = make_account(db, cfg, {"base_url": huggingface_standin.url}, label="HF models")
    token = huggingface_standin.add_token(role="read")
    _admin(client, make_user)
    huggingface_standin.fail_next(503, times=None)  # the vendor's outage

    # "Test connection" says it could not reach the vendor, and offers to save unverified.
    status, panel = post_dialog(client, account.id, {"api_token": token}, test=True, htmx=True)
    assert "server error (HTTP 503)" in panel and OFFER in panel
    # Save without ticking it: refused, nothing stored, the offer is on the page.
    status, page = post_dialog(client, account.id, {"api_token": token})
    assert status == 502 and OFFER in page
    assert get_secret(db, get_cipher(app), OWNER, account.id, "api_token") is None
    # Ticked: stored, marked unverified, said so.
    status, _ = post_dialog(client, account.id, {"api_token": token, "save_unverified": "y"})
    assert status == 302
    assert reload(app, db, account.id).status == "unverified"
    assert get_secret(db, get_cipher(app), OWNER, account.id, "api_token") is not None
    detail = client.get(f"/admin/accounts/{account.id}", follow_redirects=True).get_data(as_text=True)
    assert "Saved unverified: Hugging Face could not be reached" in detail
    assert 'badge-warning">unverified</span>' in detail and "Verify now" in detail
    events = db.scalars(select(AuditEvent).where(AuditEvent.action == "account.secret.set").order_by(AuditEvent.id))
    assert [(e.outcome, e.details.get("saved")) for e in events] == [("failure", None), ("untested", "unverified")]

    # "Verify now" while the vendor is still down: still unverified (not "failing").
    client.post(f"/admin/accounts/{account.id}/test", data={"csrf_token": csrf_of(detail)})
    assert reload(app, db, account.id).status == "unverified"

    # The vendor is back: the job verifies it.
    huggingface_standin.clear_faults()
    result = app.test_cli_runner().invoke(args=["jobs", "verify-unverified"], catch_exceptions=False)
    assert result.exit_code == 0 and f"{account.id}\tHF models\tverified" in result.output
    verified = reload(app, db, account.id)
    assert verified.status == "active" and verified.last_verified_at is not None
    assert 'badge-success">active</span>' in client.get(f"/admin/accounts/{account.id}").get_data(as_text=True)
    again = app.test_cli_runner().invoke(args=["jobs", "verify-unverified"], catch_exceptions=False)
    assert "no account is waiting for verification" in again.output


def test_no_offer_for_a_refused_token_or_a_type_that_does_not_allow_it(
    app: Flask,
    client: FlaskClient,
    db: Session,
    make_user: UserFactory,
    huggingface_standin: HuggingFace,
    generic_api_standin: GenericApi,
) -> None:
    cfg = make_config(db, get_cipher(app), app.extensions["ami_settings"], "huggingface", {})
    account = make_account(db, cfg, {"base_url": huggingface_standin.url}, label="HF models")
    _admin(client, make_user)
    # The vendor answered, and refused the token: saving it unverified would store a token known not to work.
    status, page = post_dialog(client, account.id, {"api_token": "hf_unknown", "save_unverified": "y"})
    assert status == 401 and OFFER not in page
    assert reload(app, db, account.id).status == "pending"

    # A type whose catalog entry does not allow it (the generic API key): an outage offers nothing either.
    generic = make_config(
        db,
        get_cipher(app),
        app.extensions["ami_settings"],
        "generic_api_key",
        {"base_url": generic_api_standin.url, "auth_type": "bearer", "verify_path": "/v1/me"},
    )
    other = make_account(db, generic, {"label": "In-house API"})
    generic_api_standin.fail_next(503, times=None)
    status, page = post_dialog(client, other.id, {"api_key": generic_api_standin.add_key(), "save_unverified": "y"})
    assert status == 502 and "server error (HTTP 503)" in page and OFFER not in page
    assert reload(app, db, other.id).status == "pending"


def test_the_job_commits_each_outcome_before_it_calls_the_next_vendor(
    app: Flask, db: Session, huggingface_standin: HuggingFace
) -> None:
    """One transaction over the whole job held the write lock its first audit event took (SQLite's one writer; the
    audit chain on PostgreSQL) through every later vendor call, each up to the outbound timeout and its retries:
    every other audited action waited behind a slow vendor."""
    cfg = make_config(db, get_cipher(app), app.extensions["ami_settings"], "huggingface", {})
    with HuggingFace() as slow:
        waiting = []
        for label, vendor in (("answers", huggingface_standin), ("slow", slow)):
            account = make_account(db, cfg, {"base_url": vendor.url}, label=label)
            put_secret(db, get_cipher(app), OWNER, account.id, "api_token", vendor.add_token(role="read"), grace=None)
            account.status = "unverified"
            waiting.append(account.id)
        db.commit()
        slow.hang_next()
        results: list[list[bool]] = []
        job = threading.Thread(target=lambda: results.append([v.error is None for _, v in run_verify_unverified(app)]))
        job.start()
        try:
            slow.wait_for(1)  # the job now waits for the slow vendor
            assert reload(app, db, waiting[0]).status == "active"  # the first outcome is already committed
            # Another audited action goes through meanwhile (with one transaction it waited out the database's
            # lock timeout on SQLite, and for the whole job on PostgreSQL).
            started = time.monotonic()
            audit.record(db, CTX, "account.test", target=f"connected_account:{waiting[0]}")
            db.commit()
            assert time.monotonic() - started < 5
        finally:
            slow.release()
            job.join(timeout=30)
    assert results == [[True, True]]
    assert reload(app, db, waiting[1]).status == "active"
