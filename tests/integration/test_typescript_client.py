"""The TypeScript client in clients/typescript: generated from the live OpenAPI document (no drift), type-checked
with ``tsc --strict``, and its own tests (``node --test``) run against a live app — the CMS's view of the API.

``AMI_AUTH_TEST_UPDATE_CLIENT=1`` (``make ts-client``) rewrites clients/typescript/openapi.json and src/schema.ts
from the live document instead of failing on a difference.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask
from sqlalchemy.orm import Session

from app import create_app
from app.api import tokens
from app.audit import AuditContext
from app.auth import users
from app.extensions import get_cipher, get_database
from app.models import ConnectedAccount, OAuthIdentity, ProviderConfig, utcnow
from app.vault import Secret, put_secret
from tests.conftest import PASSWORD, dispose_app, make_settings, require_peer
from tests.support.live import LiveServer, free_port, serve

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "typescript"
BIN = CLIENT / "node_modules" / ".bin"
CTX = AuditContext(actor="test")
# The document is built from the app's settings: these are the ones the committed client was generated with.
CANONICAL_SERVER = "https://auth.example.com"
CMS_ORIGIN = "https://cms.example.com"


def _node_ready() -> None:
    if shutil.which("node") is None or not (BIN / "tsc").exists():
        require_peer("the TypeScript client's toolchain is not installed (make peers: npm ci in clients/typescript)")


def _run(*command: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command), cwd=CLIENT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )


@dataclass(frozen=True)
class Seeded:
    live: LiveServer
    tight: LiveServer
    env: dict[str, str]


def _seed(app: Flask) -> dict[str, str]:
    """What the client's tests find: an admin (signed in twice), members, an OpenAI config with accounts, an
    OIDC identity linked to a member, and tokens."""
    with app.app_context():
        db: Session = get_database(app).session()
        settings = app.extensions["ami_settings"]
        admin = users.create_user(
            db, settings, email="root@example.com", password=PASSWORD, role="admin", verified=True
        )
        members = [
            users.create_user(db, settings, email=f"member{i}@example.com", password=PASSWORD, verified=True)
            for i in range(5)
        ]
        sso_only = users.create_user(db, settings, email="sso@example.com", password=None, verified=True)
        openai = ProviderConfig(provider_type="openai", name="OpenAI", enabled=True, config={"rotation_days": 90})
        oidc = ProviderConfig(provider_type="generic_oidc", name="Company SSO", enabled=True, config={})
        db.add_all([openai, oidc])
        db.flush()
        accounts = [
            ConnectedAccount(
                provider_config_id=openai.id,
                user_id=members[i % len(members)].id,
                label=f"key {i}",
                status="active",
                identifiers={"base_url": f"https://gateway{i}.example.com", "environment": "production"},
                created_at=utcnow() - timedelta(days=i),
            )
            for i in range(5)
        ]
        db.add_all(accounts)
        db.flush()
        put_secret(
            db, get_cipher(app), "connected_account", accounts[0].id, "api_key", Secret("sk-ts-client"), grace=None
        )
        db.add_all(
            [
                OAuthIdentity(user_id=members[0].id, provider_config_id=oidc.id, subject="m0", email="m0@sso.example"),
                OAuthIdentity(user_id=sso_only.id, provider_config_id=oidc.id, subject="sso", email="sso@sso.example"),
            ]
        )
        db.commit()
        full = tokens.create_token(db, CTX, name="CMS", scopes=list(tokens.SCOPES), created_by=None).raw
        narrow = tokens.create_token(db, CTX, name="narrow", scopes=["sessions:read"], created_by=None).raw
        db.commit()
        return {
            "AMI_TOKEN": full,
            "AMI_NARROW_TOKEN": narrow,
            "AMI_ADMIN_ID": str(admin.id),
            "AMI_MEMBER_ID": str(members[0].id),
            "AMI_SSO_USER_ID": str(sso_only.id),
            "AMI_OPENAI_CONFIG_ID": str(openai.id),
            "AMI_ACCOUNT_COUNT": str(len(accounts)),
            "AMI_USER_COUNT": str(len(members) + 2),
        }


def _cookie_session(base: str) -> tuple[str, str]:
    """Sign the admin in through the real sign-in page: (the session cookie, its session's public id)."""
    with httpx.Client(base_url=base, follow_redirects=False) as browser:
        page = browser.get("/signin").text
        token = page.split('name="csrf_token"', 1)[1].split('value="', 1)[1].split('"', 1)[0]
        reply = browser.post("/signin", data={"email": "root@example.com", "password": PASSWORD, "csrf_token": token})
        assert reply.status_code == 302, reply.text[:300]
        cookie = browser.cookies["ami_session"]
        session_id = browser.get("/api/auth/session").json()["session"]["id"]
        return cookie, session_id


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Seeded]:
    _node_ready()
    tmp = tmp_path_factory.mktemp("ts-client")
    database = tmp / "ami.db"
    shutil.copy(sqlite_template, database)
    port, tight_port = free_port(), free_port()
    common = {"AMI_AUTH_CMS_ORIGINS": CMS_ORIGIN, "AMI_AUTH_API_IP_RATE_PER_MINUTE": "100000"}
    app = create_app(
        make_settings(
            tmp,
            f"sqlite:///{database}",
            AMI_AUTH_BASE_URL=f"http://127.0.0.1:{port}",
            AMI_AUTH_API_RATE_PER_MINUTE="100000",
            **common,
        )
    )
    # The same database behind a tight limit: the client's 429 back-off meets the real limiter.
    tight_app = create_app(
        make_settings(
            tmp,
            f"sqlite:///{database}",
            AMI_AUTH_BASE_URL=f"http://127.0.0.1:{tight_port}",
            AMI_AUTH_API_RATE_PER_MINUTE="2",
            **common,
        )
    )
    env = _seed(app)
    try:
        with serve(app, port) as live, serve(tight_app, tight_port) as tight:
            base = f"http://127.0.0.1:{port}"
            cookie, _ = _cookie_session(base)
            _, other_session = _cookie_session(base)
            env.update(
                AMI_BASE_URL=base,
                AMI_TIGHT_BASE_URL=f"http://127.0.0.1:{tight_port}",
                AMI_SESSION_COOKIE=cookie,
                AMI_OTHER_SESSION_ID=other_session,
                AMI_CMS_ORIGIN=CMS_ORIGIN,
            )
            yield Seeded(live, tight, env)
    finally:
        dispose_app(app)
        dispose_app(tight_app)


def _canonical_document(seeded: Seeded) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(f"{seeded.env['AMI_BASE_URL']}/api/openapi.json").json()
    document["servers"] = [{"url": CANONICAL_SERVER}]
    return document


def _diff(old: str, new: str, name: str) -> str:
    lines = difflib.unified_diff(old.splitlines(), new.splitlines(), f"committed {name}", f"live {name}", lineterm="")
    return "\n".join(list(lines)[:60])


def test_the_client_is_generated_from_the_live_document(seeded: Seeded, tmp_path: Path) -> None:
    """openapi.json and src/schema.ts are what the server's document generates today (make ts-client)."""
    document = json.dumps(_canonical_document(seeded), indent=2, ensure_ascii=False) + "\n"
    fresh = tmp_path / "openapi.json"
    fresh.write_text(document)
    generated = tmp_path / "schema.ts"
    result = _run(
        str(BIN / "openapi-typescript"), str(fresh), "--output", str(generated), "--default-non-nullable", "false"
    )
    assert result.returncode == 0, result.stderr
    pairs = [(CLIENT / "openapi.json", document), (CLIENT / "src" / "schema.ts", generated.read_text())]
    if os.environ.get("AMI_AUTH_TEST_UPDATE_CLIENT") == "1":
        for path, text in pairs:
            path.write_text(text)
    for path, text in pairs:
        committed = path.read_text() if path.exists() else ""
        assert committed == text, f"regenerate the client (make ts-client):\n{_diff(committed, text, path.name)}"


def test_the_client_type_checks_strictly_and_its_tests_pass_against_the_live_app(seeded: Seeded) -> None:
    """tsc --strict over the client, its tests and the README's example; then node --test against the app."""
    compiled = _run(str(BIN / "tsc"), "--strict", "-p", "tsconfig.json")
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    tests = sorted(str(p) for p in (CLIENT / "dist" / "test").glob("*.test.js"))
    assert len(tests) >= 4, tests
    result = _run("node", "--test", "--test-reporter=spec", *tests, env=seeded.env, timeout=600)
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert " fail 0" in result.stdout or "# fail 0" in result.stdout


def test_the_readme_example_is_the_compiled_one() -> None:
    """The README shows examples/quickstart.ts verbatim, so the example a CMS developer copies compiles."""
    readme = (CLIENT / "README.md").read_text()
    example = (CLIENT / "examples" / "quickstart.ts").read_text()
    assert f"```ts\n{example}```" in readme
