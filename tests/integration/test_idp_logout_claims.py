"""Back-channel logout deliveries sent by several workers: a worker held up by an app that hangs, past its claim,
leaves what another worker took over alone (it neither sends it again nor writes a second outcome)."""

from __future__ import annotations

import base64
import json
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.extensions import get_cipher, get_database
from app.idp import clients
from app.idp.keys import KeyRing
from app.idp.logout import CLAIM, Run, deliver_due
from app.models import AuditEvent, OidcLogoutDelivery, utcnow
from app.net import get_client
from tests.support.accounts import CTX
from tests.support.hold import Hold, connections_while_held


class _App:
    """An app's back-channel logout endpoint on 127.0.0.1: keeps each logout token it receives, in order, and can
    leave the next request unanswered until released (an app that hangs)."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.hold = Hold()
        app = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0"))).decode()
                app.hold.pause()
                app.tokens.extend(urllib.parse.parse_qs(body)["logout_token"])
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/backchannel"

    def stop(self) -> None:
        self.hold.release()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def _jti(token: str) -> str:
    payload = token.split(".")[1]
    jti: str = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"]
    return jti


def _due_deliveries(db: Session, logout_app: _App, sids: tuple[str, ...]) -> datetime:
    """A client whose back-channel logout endpoint is ``logout_app``, and a logout due for it per sid, due at the
    time returned."""
    client = clients.create_client(
        db,
        CTX,
        {"name": "CMS", "redirect_uris": ["https://cms.example.com/cb"], "backchannel_logout_uri": logout_app.url},
    ).client
    t0 = utcnow()
    for sid in sids:
        db.add(
            OidcLogoutDelivery(
                client_id=client.id, uri=logout_app.url, sub="user-7", sid=sid, jti=f"jti-{sid}", reason="test",
                created_at=t0, next_attempt_at=t0,
            )
        )  # fmt: skip
    db.commit()
    return t0


@pytest.fixture
def logout_app() -> Iterator[_App]:
    app = _App()
    yield app
    app.stop()


def test_a_worker_whose_claim_ran_out_leaves_what_another_worker_took_over(
    app: Flask, db: Session, logout_app: _App
) -> None:
    t0 = _due_deliveries(db, logout_app, ("sid-1", "sid-2"))
    engine = get_database(app).engine
    keyring = KeyRing(engine, get_cipher(app))
    issuer = app.extensions["ami_settings"].base_url
    runs: list[Run] = []
    logout_app.hold.next()
    with app.app_context():
        http = get_client(app)
        first = threading.Thread(target=lambda: runs.append(deliver_due(engine, keyring, issuer, http, now=t0)))
        first.start()
        try:
            logout_app.hold.wait_held()  # the first worker waits on the app, both deliveries claimed
            later = deliver_due(engine, keyring, issuer, http, now=t0 + CLAIM + timedelta(seconds=1))
            assert (later.delivered, later.taken_over) == (2, 0)  # the claims ran out: another worker sends both
        finally:
            logout_app.hold.release()
            first.join(timeout=30)
    # The held request was already on its way (at least once); the second was not sent again.
    jtis = [_jti(token) for token in logout_app.tokens]
    assert sorted(jtis.count(j) for j in set(jtis)) == [1, 2]
    assert (runs[0].delivered, runs[0].taken_over) == (0, 2)
    db.expire_all()
    assert [d.attempts for d in db.scalars(select(OidcLogoutDelivery))] == [1, 1]
    delivered = db.scalars(select(AuditEvent).where(AuditEvent.action == "oidc.backchannel.deliver")).all()
    assert len(delivered) == 2


def test_a_worker_waiting_on_an_app_holds_no_database_connection(app: Flask, db: Session, logout_app: _App) -> None:
    """A sender held up by an app that hangs (up to its 5 s timeout per delivery, 50 deliveries a run) keeps no
    transaction open meanwhile: no connection of the pool the requests share is tied up."""
    t0 = _due_deliveries(db, logout_app, ("sid-1",))
    engine = get_database(app).engine
    with app.app_context():
        http = get_client(app)
        keyring = KeyRing(engine, get_cipher(app))
        issuer = app.extensions["ami_settings"].base_url
        idle, held, run = connections_while_held(
            engine, logout_app.hold, lambda: deliver_due(engine, keyring, issuer, http, now=t0)
        )
    assert held == idle
    assert run.delivered == 1
