"""The credential-injecting proxy on SQLite and PostgreSQL, served for real (werkzeug's threaded server on
127.0.0.1) in front of a local streaming upstream shaped like OpenAI (tests/support/stream_upstream.py).

What a caller sees: the provider's answer with the key added and never shown; streams both ways; the catalog's
path and method rules; redirects passed back, not followed; one attempt only; rate limits passed back and
recorded; a refused key marking the account; scopes and token limits; one audit event per call without a
secret. The production shape (gunicorn, 200 streams, callers leaving) is tests/e2e/production/test_proxy_streams.py.
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from flask import Flask
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.api import tokens
from app.audit import AuditContext
from app.connectors import accounts
from app.connectors import proxy as rules
from app.extensions import get_cipher, get_settings
from app.models import AuditEvent, ConnectedAccount, ProviderConfig
from app.net import OutboundClient, Upstream, get_client
from app.settings import Settings
from app.vault import Secret
from tests.conftest import UserFactory, make_settings
from tests.support.accounts import CTX, make_account, make_config
from tests.support.live import LiveServer, free_port, serve
from tests.support.stream_upstream import StreamUpstream, running_upstream

KEY = "sk-proj-" + "k" * 40


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(
        tmp_path,
        database_url,
        AMI_AUTH_OUTBOUND_RETRIES="2",  # the proxy must make one attempt whatever this says
        AMI_AUTH_PROXY_MAX_REQUEST_BYTES="100000",
        AMI_AUTH_OUTBOUND_POOL_SIZE="10",
        AMI_AUTH_PROXY_POOL_TIMEOUT="1",
    )


@pytest.fixture
def upstream() -> Iterator[StreamUpstream]:
    with running_upstream() as up:
        up.add_key(KEY)
        yield up


@pytest.fixture
def live(app: Flask) -> Iterator[LiveServer]:
    with serve(app, free_port()) as server:
        yield server


def _token(db: Session, *scopes: str, limits: tokens.AccountLimits | None = None) -> dict[str, str]:
    raw = tokens.create_token(
        db, AuditContext(actor="test"), name="CMS", scopes=list(scopes), created_by=None, limits=limits
    ).raw
    db.commit()
    return {"Authorization": f"Bearer {raw}"}


def _openai(app: Flask, db: Session, upstream: StreamUpstream, label: str = "GPT") -> ConnectedAccount:
    cfg = make_config(db, get_cipher(app), get_settings(app), "openai", {}, name=f"OpenAI {label}")
    account = make_account(db, cfg, {"base_url": upstream.url}, label=label)
    with app.app_context():
        accounts.save_secrets(
            db, get_cipher(app), get_client(app), get_settings(app), CTX, account, {"api_key": Secret(KEY)}
        )
    db.commit()
    return account


@pytest.fixture
def account(app: Flask, db: Session, upstream: StreamUpstream) -> ConnectedAccount:
    return _openai(app, db, upstream)


@pytest.fixture
def proxy_headers(db: Session) -> dict[str, str]:
    return _token(db, "accounts:proxy")


def _url(live: LiveServer, account: ConnectedAccount, path: str) -> str:
    return f"http://127.0.0.1:{live.port}/api/account-manager/accounts/{account.id}/proxy/{path}"


def _events(db: Session, account: ConnectedAccount) -> list[AuditEvent]:
    db.expire_all()
    return list(
        db.scalars(
            select(AuditEvent)
            .where(AuditEvent.action == "account.proxy", AuditEvent.target == f"connected_account:{account.id}")
            .order_by(AuditEvent.id)
        )
    )


def _wait_for_events(db: Session, account: ConnectedAccount, count: int) -> list[AuditEvent]:
    deadline = time.monotonic() + 5
    while True:
        found = _events(db, account)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_a_get_reaches_the_account_base_url_with_the_key_added_and_never_shown(
    live: LiveServer, db: Session, account: ConnectedAccount, upstream: StreamUpstream, proxy_headers: dict[str, str]
) -> None:
    sent = {
        **proxy_headers,
        "Cookie": "session=caller",
        "X-Forwarded-For": "10.1.2.3",
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "drop me",
        "X-Caller": "kept",
    }
    before = len(upstream.hits("/v1/models"))
    response = httpx.get(_url(live, account, "v1/models?limit=2"), headers=sent)
    assert response.status_code == 200
    assert response.json()["data"][0]["id"] == "gpt-4o"
    assert KEY not in response.text and KEY not in str(response.headers)
    seen = upstream.hits("/v1/models")[before]
    assert seen.headers["authorization"] == f"Bearer {KEY}"  # the account's key, not the caller's token
    assert "cookie" not in seen.headers and "x-forwarded-for" not in seen.headers and "x-hop" not in seen.headers
    assert seen.headers["x-caller"] == "kept"

    cookie = httpx.get(_url(live, account, "v1/cookie"), headers=proxy_headers)
    assert cookie.status_code == 200 and "set-cookie" not in cookie.headers
    assert cookie.headers["x-ratelimit-remaining-requests"] == "59"

    events = _wait_for_events(db, account, 2)
    details = events[0].details
    assert details["method"] == "GET" and details["path"] == "/v1/models" and details["status"] == 200
    assert details["bytes_out"] == len(response.content) and details["ms"] >= 0
    assert events[0].actor.startswith("service_token:")
    assert all(KEY not in json.dumps(e.details) for e in db.scalars(select(AuditEvent)))


def test_server_sent_events_arrive_as_the_upstream_sends_them(
    live: LiveServer, account: ConnectedAccount, proxy_headers: dict[str, str]
) -> None:
    body = {"model": "gpt-4o", "stream": True, "n_events": 5, "delay": 0.3}
    arrivals: list[float] = []
    started = time.monotonic()
    with httpx.stream("POST", _url(live, account, "v1/chat/completions"), json=body, headers=proxy_headers) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
        assert r.headers["x-accel-buffering"] == "no"
        lines = []
        for line in r.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic() - started)
                lines.append(line)
    assert lines[-1] == "data: [DONE]" and len(lines) == 6
    # The first token is passed on at once, not when the stream ends 1.5 s later.
    assert arrivals[0] < 0.9 and arrivals[-1] > 1.2


def test_a_request_body_streams_up_and_an_oversized_one_is_refused(
    live: LiveServer, account: ConnectedAccount, upstream: StreamUpstream, proxy_headers: dict[str, str]
) -> None:
    def chunks() -> Iterator[bytes]:
        for i in range(10):
            yield f"part {i};".encode() * 100

    echoed = httpx.post(_url(live, account, "v1/echo"), content=chunks(), headers=proxy_headers)
    assert echoed.status_code == 200
    assert echoed.content == b"".join(chunks())

    too_big = httpx.post(_url(live, account, "v1/echo"), content=b"x" * 100001, headers=proxy_headers)
    assert too_big.status_code == 413
    assert too_big.json()["error"]["fields"]["body"] == "At most 100000 bytes."


def test_redirects_come_back_to_the_caller_and_are_never_followed(
    live: LiveServer, account: ConnectedAccount, proxy_headers: dict[str, str]
) -> None:
    with running_upstream() as elsewhere:
        target = f"{elsewhere.url}/v1/models"
        response = httpx.get(_url(live, account, f"v1/redirect?to={target}"), headers=proxy_headers)
        assert response.status_code == 302 and response.headers["location"] == target
        assert elsewhere.seen == []  # the key never went to the other host


def test_a_post_is_sent_once_and_its_failure_passed_back(
    live: LiveServer, account: ConnectedAccount, upstream: StreamUpstream, proxy_headers: dict[str, str]
) -> None:
    response = httpx.post(_url(live, account, "v1/flaky"), json={"prompt": "bill me once"}, headers=proxy_headers)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert len(upstream.hits("/v1/flaky")) == 1  # not retried, although AMI_AUTH_OUTBOUND_RETRIES is 2


def test_rate_limits_are_passed_back_and_recorded_on_the_account(
    live: LiveServer, db: Session, account: ConnectedAccount, proxy_headers: dict[str, str]
) -> None:
    response = httpx.get(_url(live, account, "v1/limited"), headers=proxy_headers)
    assert response.status_code == 429 and response.headers["retry-after"] == "7"
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    db.expire_all()
    recorded = db.get(ConnectedAccount, account.id)
    assert recorded is not None
    limits = recorded.provider_data["upstream_limits"]
    assert limits["status"] == 429 and limits["headers"]["retry-after"] == "7"
    assert limits["headers"]["x-ratelimit-limit-requests"] == "60"


def test_a_refused_key_marks_the_account_as_the_verification_does(
    live: LiveServer, db: Session, account: ConnectedAccount, upstream: StreamUpstream, proxy_headers: dict[str, str]
) -> None:
    upstream.keys.clear()  # the key was revoked at the vendor
    response = httpx.get(_url(live, account, "v1/models"), headers=proxy_headers)
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    db.expire_all()
    marked = db.get(ConnectedAccount, account.id)
    assert marked is not None and marked.status == "failing" and marked.last_error_code == "invalid_credentials"


def test_a_replaced_key_and_a_deleted_account_are_seen_by_the_next_call(
    app: Flask,
    live: LiveServer,
    db: Session,
    account: ConnectedAccount,
    upstream: StreamUpstream,
    proxy_headers: dict[str, str],
) -> None:
    assert httpx.get(_url(live, account, "v1/models"), headers=proxy_headers).status_code == 200  # the row is kept
    new_key = upstream.add_key("sk-proj-" + "n" * 40)
    with app.app_context():
        accounts.save_secrets(
            db, get_cipher(app), get_client(app), get_settings(app), CTX, account, {"api_key": Secret(new_key)}
        )
    db.commit()
    assert httpx.get(_url(live, account, "v1/models"), headers=proxy_headers).status_code == 200
    assert upstream.hits("/v1/models")[-1].headers["authorization"] == f"Bearer {new_key}"

    delete = httpx.delete(
        f"http://127.0.0.1:{live.port}/api/account-manager/accounts/{account.id}?force=true",
        headers=_token(db, "accounts:write"),
    )
    assert delete.status_code == 200
    gone = httpx.get(_url(live, account, "v1/models"), headers=proxy_headers)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"


def test_a_config_disabled_by_another_process_is_refused_within_the_cache_time(
    live: LiveServer, db: Session, account: ConnectedAccount, proxy_headers: dict[str, str]
) -> None:
    assert httpx.get(_url(live, account, "v1/models"), headers=proxy_headers).status_code == 200  # the row is kept
    # Another worker or host disables its config (a plain UPDATE on a connection of its own: this process hears
    # nothing of it, so its copy of the row is believed until it is rules.ACCOUNT_CACHE_SECONDS old).
    with db.get_bind().engine.begin() as other:
        config = ProviderConfig.id == account.provider_config_id
        other.execute(update(ProviderConfig).where(config).values(enabled=False))
    time.sleep(rules.ACCOUNT_CACHE_SECONDS)
    refused = httpx.get(_url(live, account, "v1/models"), headers=proxy_headers)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "conflict"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "v1/../admin", 422, "validation_failed"),
        ("GET", "v1/%2e%2e/admin", 422, "validation_failed"),
        ("GET", "v1/models%2F..%2Fx", 422, "validation_failed"),
        ("GET", "v1//models", 422, "validation_failed"),
        ("GET", "v2/secrets", 403, "permission_denied"),
        ("PUT", "v1/models", 405, "method_not_allowed"),
    ],
)
def test_only_the_paths_and_methods_the_catalog_allows_are_forwarded(
    live: LiveServer,
    account: ConnectedAccount,
    upstream: StreamUpstream,
    proxy_headers: dict[str, str],
    method: str,
    path: str,
    status: int,
    code: str,
) -> None:
    before = len(upstream.seen)
    # A raw request: an HTTP client would normalise '..' before sending it.
    with socket.create_connection(("127.0.0.1", int(_url(live, account, "").split(":")[2].split("/")[0]))) as sock:
        target = f"/api/account-manager/accounts/{account.id}/proxy/{path}"
        sock.sendall(
            f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {proxy_headers['Authorization']}\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(status).encode(), raw
    assert json.loads(body)["error"]["code"] == code
    assert len(upstream.seen) == before


def test_scopes_and_token_limits_decide_who_may_use_which_account(
    app: Flask,
    live: LiveServer,
    db: Session,
    account: ConnectedAccount,
    upstream: StreamUpstream,
    make_user: UserFactory,
) -> None:
    other = _openai(app, db, upstream, label="Other")
    url = _url(live, account, "v1/models")
    assert httpx.get(url).status_code == 401
    wrong_scope = httpx.get(url, headers=_token(db, "accounts:headers", "accounts:read"))
    assert wrong_scope.status_code == 403 and "accounts:proxy" in wrong_scope.json()["error"]["message"]
    only_other = _token(db, "accounts:proxy", limits=tokens.AccountLimits(account_ids=frozenset({other.id})))
    assert httpx.get(url, headers=only_other).status_code == 403
    assert httpx.get(_url(live, other, "v1/models"), headers=only_other).status_code == 200
    only_anthropic = _token(db, "accounts:proxy", limits=tokens.AccountLimits(provider_types=frozenset({"anthropic"})))
    assert httpx.get(url, headers=only_anthropic).status_code == 403
    only_openai = _token(db, "accounts:proxy", limits=tokens.AccountLimits(provider_types=frozenset({"openai"})))
    assert httpx.get(url, headers=only_openai).status_code == 200
    assert httpx.get(f"http://127.0.0.1:{live.port}/api/account-manager/accounts/999999/proxy/v1/models",
                     headers=only_openai).status_code == 404  # fmt: skip


def test_a_full_outbound_pool_answers_503_with_retry_after(
    live: LiveServer, account: ConnectedAccount, upstream: StreamUpstream, proxy_headers: dict[str, str]
) -> None:
    # AMI_AUTH_OUTBOUND_POOL_SIZE=10: ten slow calls hold every connection; the eleventh waits 1 s, then 503.
    with (
        httpx.Client(timeout=10, limits=httpx.Limits(max_connections=20)) as client,
        concurrent.futures.ThreadPoolExecutor(10) as pool,
    ):
        holders = [
            pool.submit(client.get, _url(live, account, f"v1/slow?wait=3&id=h{i}"), headers=proxy_headers)
            for i in range(10)
        ]
        deadline = time.monotonic() + 5
        while len(upstream.hits("/v1/slow")) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        refused = client.get(_url(live, account, "v1/slow?wait=0&id=late"), headers=proxy_headers)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        assert refused.json()["error"]["code"] == "service_unavailable"
        assert all(h.result().status_code == 200 for h in holders)


def test_head_is_answered_from_the_upstream_and_audited(
    live: LiveServer, db: Session, account: ConnectedAccount, upstream: StreamUpstream, proxy_headers: dict[str, str]
) -> None:
    response = httpx.head(_url(live, account, "v1/models"), headers=proxy_headers)
    assert response.status_code == 200 and response.content == b""
    assert upstream.hits("/v1/models")[-1].method == "HEAD"
    events = _wait_for_events(db, account, 1)
    assert events[-1].details["method"] == "HEAD" and events[-1].details["ended"] == "complete"


def test_the_default_outbound_pool_holds_more_than_a_hundred_streams_in_one_process(
    tmp_path: Path, sqlite_url: str, upstream: StreamUpstream
) -> None:
    # A pool of 100 connections (httpx's default) capped a reference proxy's concurrent streams at 100 per
    # process: here 150 calls wait on the upstream at once through one process's client.
    client = OutboundClient.from_settings(make_settings(tmp_path, sqlite_url))
    assert client.pool_size == 512
    opened: list[Upstream] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        answer = client.open_stream(
            "GET", f"{upstream.url}/v1/slow?wait=2&id=p{i}", headers=[("Authorization", f"Bearer {KEY}")],
            params={}, content=None, read_timeout=10, pool_timeout=1,
        )  # fmt: skip
        with lock:
            opened.append(answer)

    with client, concurrent.futures.ThreadPoolExecutor(150) as pool:
        calls = [pool.submit(one, i) for i in range(150)]
        deadline = time.monotonic() + 10
        while len(upstream.hits("/v1/slow")) < 150 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(upstream.hits("/v1/slow")) == 150  # all waiting upstream together, none queued for a connection
        for call in calls:
            call.result()
        for answer in opened:
            assert answer.status == 200
            answer.close()
