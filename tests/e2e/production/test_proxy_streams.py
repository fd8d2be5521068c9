"""The proxy in the production shape: gunicorn with app/gunicorn_conf.py (2 workers, gthread), PostgreSQL, Redis,
nginx, in front of the local streaming upstream (tests/support/stream_upstream.py).

Each pitfall seen with a reference proxy of this shape, on purpose: sync workers finishing 12 of 200 streams
(200 streams here, on one host's 2 workers, while its sign-in page answers); a pool of 100 connections capping
streams at 100 (200 here, through one worker's pool or two); a caller leaving before the first byte leaving the
upstream call running; a request queued after its caller gave up still being sent; nginx buffering a stream.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from app.api import tokens
from app.audit import PG_CHAIN_LOCK_KEY, AuditContext
from app.connectors import accounts
from app.extensions import get_cipher, get_database, get_settings
from app.models import AuditEvent
from app.net import get_client
from app.vault import Secret
from tests.support.accounts import make_account, make_config
from tests.support.prod_stack import ProductionStack
from tests.support.stream_upstream import StreamUpstream, running_upstream

STREAMS = 200
KEY = "sk-proj-" + "p" * 40


@dataclass
class Proxied:
    upstream: StreamUpstream
    account_id: int
    headers: dict[str, str]

    def path(self, rest: str) -> str:
        return f"/api/account-manager/accounts/{self.account_id}/proxy/{rest}"


@pytest.fixture(scope="module")
def proxied(prod: ProductionStack) -> Iterator[Proxied]:
    with running_upstream() as upstream:
        upstream.add_key(KEY)
        app = prod.app
        with app.app_context():
            db = get_database(app).session()
            cfg = make_config(
                db, get_cipher(app), get_settings(app), "openai", {}, name=f"OpenAI {secrets.token_hex(3)}"
            )
            account = make_account(db, cfg, {"base_url": upstream.url}, label="Streams")
            ctx = AuditContext(actor="test")
            accounts.save_secrets(
                db, get_cipher(app), get_client(app), get_settings(app), ctx, account, {"api_key": Secret(KEY)}
            )
            raw = tokens.create_token(db, ctx, name="CMS streams", scopes=["accounts:proxy"], created_by=None).raw
            db.commit()
            yield Proxied(upstream, account.id, {"Authorization": f"Bearer {raw}"})


def _proxy_events(prod: ProductionStack, account_id: int) -> list[dict[str, Any]]:
    """The details of the account's ``account.proxy`` audit events, with their outcome."""
    app = prod.app
    with app.app_context():
        db = get_database(app).session()
        found = [
            {**e.details, "outcome": e.outcome}
            for e in db.scalars(
                select(AuditEvent).where(
                    AuditEvent.action == "account.proxy", AuditEvent.target == f"connected_account:{account_id}"
                )
            )
        ]
        db.rollback()
        return found


def _wait_for_stage(prod: ProductionStack, proxied: Proxied, stage: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        found = [
            e
            for e in _proxy_events(prod, proxied.account_id)
            if e.get("code") == "caller_gone" and e.get("stage") == stage and e["outcome"] == "failure"
        ]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_two_workers_hold_200_streams_while_the_sign_in_page_answers(prod: ProductionStack, proxied: Proxied) -> None:
    url = prod.gunicorn.url + proxied.path("v1/chat/completions")
    body = {"model": "gpt-4o", "stream": True, "n_events": 12, "delay": 0.5}  # about 6 s each
    results: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    before = len(proxied.upstream.hits("/v1/chat/completions"))

    def one() -> None:
        try:
            with httpx.stream("POST", url, json=body, headers=proxied.headers, timeout=60) as response:
                events = [line for line in response.iter_lines() if line.startswith("data: ")]
            with lock:
                results.append(len(events) if response.status_code == 200 else -response.status_code)
        except httpx.HTTPError as exc:
            with lock:
                errors.append(repr(exc))

    threads = [threading.Thread(target=one) for _ in range(STREAMS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(proxied.upstream.hits("/v1/chat/completions")) - before < STREAMS and time.monotonic() < deadline:
        time.sleep(0.1)
    # Every stream is open at the upstream at once: neither the workers nor the outbound pool held any back.
    assert len(proxied.upstream.hits("/v1/chat/completions")) - before == STREAMS
    started = time.monotonic()
    page = httpx.get(prod.gunicorn.url + "/signin", timeout=10)
    answered_in = time.monotonic() - started
    assert page.status_code == 200 and answered_in < 3, answered_in
    for thread in threads:
        thread.join(timeout=90)
    assert errors == []
    assert results == [13] * STREAMS  # 12 chunks and [DONE], every one of them


def test_sse_is_not_buffered_by_nginx(prod: ProductionStack, proxied: Proxied) -> None:
    body = {"model": "gpt-4o", "stream": True, "n_events": 4, "delay": 0.5}
    arrivals: list[float] = []
    started = time.monotonic()
    with (
        httpx.Client(verify=prod.ssl_context(), timeout=30) as client,
        client.stream(
            "POST", prod.url + proxied.path("v1/chat/completions"), json=body, headers=proxied.headers
        ) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 5 and arrivals[0] < 1.2 and arrivals[-1] > 1.8


def test_a_caller_leaving_before_the_first_byte_cuts_the_upstream_call(prod: ProductionStack, proxied: Proxied) -> None:
    url = prod.gunicorn.url + proxied.path("v1/slow?wait=8&id=left-early")
    with pytest.raises(httpx.ReadTimeout):
        # The caller gives up after a second, long before the upstream's first byte (8 s).
        httpx.get(url, headers=proxied.headers, timeout=httpx.Timeout(5, read=1))
    deadline = time.monotonic() + 4
    while "left-early" not in proxied.upstream.cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "left-early" in proxied.upstream.cancelled, "the upstream call was cut, not left to run for 8 s"
    assert _wait_for_stage(prod, proxied, "waiting"), "the cut call is audited"


def test_a_request_whose_caller_already_left_is_not_sent(prod: ProductionStack, proxied: Proxied) -> None:
    target = proxied.path("v1/slow?wait=0&id=queued")
    request = (
        f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {proxied.headers['Authorization']}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", prod.gunicorn.port)) as sock:
        sock.sendall(request)
    # The caller is gone before a worker thread took the request up.
    assert _wait_for_stage(prod, proxied, "queued"), "the refusal to send is audited"
    assert [s for s in proxied.upstream.hits("/v1/slow") if s.query.get("id") == "queued"] == []


def test_a_worker_stopping_writes_the_audit_events_it_still_had_queued(prod: ProductionStack, proxied: Proxied) -> None:
    """The proxy hands its events to a writer thread (answers do not wait for the database). Here the database holds
    that thread back (the test holds the audit chain's lock) while 12 calls are answered and the host is stopped
    gracefully, as a deploy does: the workers write the queued events before they exit."""
    engine = get_database(prod.app).engine
    before = len(_proxy_events(prod, proxied.account_id))
    with engine.connect() as holder:
        holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": PG_CHAIN_LOCK_KEY})
        with httpx.Client(timeout=10) as client:
            for _ in range(12):
                assert (
                    client.get(prod.gunicorn.url + proxied.path("v1/models"), headers=proxied.headers).status_code
                    == 200
                )
        assert len(_proxy_events(prod, proxied.account_id)) == before, "the writer was held back"
        restart = threading.Thread(target=prod.gunicorn.restart)
        restart.start()
        time.sleep(1.5)  # the master has told its workers to stop; they wait on the lock with their queues
        holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": PG_CHAIN_LOCK_KEY})
        holder.commit()
    restart.join(60)
    assert not restart.is_alive() and prod.gunicorn.running
    assert len(_proxy_events(prod, proxied.account_id)) - before == 12
