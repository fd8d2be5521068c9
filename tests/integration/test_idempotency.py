"""``Idempotency-Key`` on the creating POSTs, on SQLite and PostgreSQL, with two app instances on one database
standing for two workers: a retry replays the first answer wherever it lands; another body with the same key is
refused; a request still running blocks its key (409); a failure is not kept; keys belong to their caller and
expire after 24 hours."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import create_app
from app.api import tokens
from app.audit import AuditContext
from app.models import IdempotencyRecord, MailOutbox, ProviderConfig, ServiceToken, utcnow
from app.settings import Settings
from tests.conftest import dispose_app

PATH = "/api/account-manager/provider-configs"


@pytest.fixture
def second_worker(settings: Settings) -> Iterator[FlaskClient]:
    """Another app on the same database: what a retry meets when the load balancer picks another worker."""
    other = create_app(settings)
    yield other.test_client()
    dispose_app(other)


def _token(db: Session, name: str = "CMS") -> dict[str, str]:
    raw = tokens.create_token(
        db, AuditContext(actor="test"), name=name, scopes=["providers:write", "users:write"], created_by=None
    ).raw
    db.commit()
    return {"Authorization": f"Bearer {raw}"}


def _configs(db: Session) -> int:
    db.expire_all()
    return int(db.scalar(select(func.count()).select_from(ProviderConfig)) or 0)


def _post(client: FlaskClient, auth: dict[str, str], key: str, body: dict[str, Any]) -> Any:
    return client.post(PATH, json=body, headers={**auth, "Idempotency-Key": key})


def test_a_retry_replays_the_first_answer_on_any_worker(
    client: FlaskClient, second_worker: FlaskClient, db: Session
) -> None:
    auth = _token(db)
    body = {"provider_type": "openai", "name": "OpenAI", "config": {"rotation_days": 30}}
    first = _post(client, auth, "key-1", body)
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    again = _post(second_worker, auth, "key-1", body)
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert again.headers["Location"] == first.headers["Location"] == f"{PATH}/{first.get_json()['id']}"
    assert _configs(db) == 1
    # Another body with the same key is refused on its header; nothing is created.
    other = _post(second_worker, auth, "key-1", {**body, "name": "OpenAI 2"})
    assert other.status_code == 422
    assert "Idempotency-Key" in other.get_json()["error"]["fields"]
    assert _configs(db) == 1
    # Without a key, the same request creates again (here: refused, the name is taken).
    assert client.post(PATH, json=body, headers=auth).status_code == 409


def test_keys_belong_to_their_caller_and_failures_are_not_kept(client: FlaskClient, db: Session) -> None:
    first, second = _token(db, "CMS a"), _token(db, "CMS b")
    assert _post(client, first, "shared", {"provider_type": "anthropic", "name": "A"}).status_code == 201
    assert _post(client, second, "shared", {"provider_type": "anthropic", "name": "B"}).status_code == 201
    # A refused first attempt created nothing and keeps nothing: the fixed request runs under the same key.
    bad = _post(client, first, "retry-me", {"provider_type": "openai", "name": "O", "config": {"rotation_days": "9"}})
    assert bad.status_code == 422
    fixed = _post(client, first, "retry-me", {"provider_type": "openai", "name": "O", "config": {"rotation_days": 9}})
    assert fixed.status_code == 201 and "Idempotent-Replayed" not in fixed.headers
    assert _configs(db) == 3


def test_a_key_in_progress_answers_409_and_an_abandoned_or_expired_one_runs(client: FlaskClient, db: Session) -> None:
    auth = _token(db)
    owner = f"service_token:{db.scalars(select(ServiceToken.id)).one()}"
    body = {"provider_type": "anthropic", "name": "Claude"}
    raw = b'{"provider_type": "anthropic", "name": "Claude"}'
    running = IdempotencyRecord(
        owner=owner,
        key="busy",
        method="POST",
        path=PATH,
        body_hash=hashlib.sha256(raw).hexdigest(),
        created_at=utcnow(),
    )
    db.add(running)
    db.commit()
    response = client.post(PATH, data=raw, content_type="application/json", headers={**auth, "Idempotency-Key": "busy"})
    assert response.status_code == 409 and response.headers["Retry-After"] == "1"
    assert "still in progress" in response.get_json()["error"]["message"]
    # Its worker died: after two minutes the key is free again.
    running.created_at = utcnow() - timedelta(minutes=3)
    db.commit()
    taken = client.post(PATH, data=raw, content_type="application/json", headers={**auth, "Idempotency-Key": "busy"})
    assert taken.status_code == 201
    # 24 hours later a key may name another creation.
    db.expire_all()
    stored = db.scalars(select(IdempotencyRecord).where(IdempotencyRecord.key == "busy")).one()
    stored.created_at = utcnow() - timedelta(hours=25)
    db.commit()
    assert _post(client, auth, "busy", {**body, "name": "Claude 2"}).status_code == 201


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "naïve"])
def test_a_malformed_key_is_refused_on_its_header(client: FlaskClient, db: Session, key: str) -> None:
    response = _post(client, _token(db), key, {"provider_type": "anthropic", "name": "Claude"})
    assert response.status_code == 422 and "Idempotency-Key" in response.get_json()["error"]["fields"]
    assert _configs(db) == 0


def test_a_replayed_invitation_is_not_mailed_twice(client: FlaskClient, db: Session) -> None:
    auth = _token(db)
    headers = {**auth, "Idempotency-Key": "invite-ann"}
    first = client.post("/api/users", json={"email": "ann@example.com"}, headers=headers)
    again = client.post("/api/users", json={"email": "ann@example.com"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true" and again.get_json() == first.get_json()
    assert db.scalar(select(func.count()).select_from(MailOutbox)) == 1
