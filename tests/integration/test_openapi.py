"""The OpenAPI document: valid 3.1, complete, true to the real responses, and every endpoint fuzzed from it."""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from openapi_spec_validator import validate as validate_openapi
from schemathesis.checks import not_a_server_error
from schemathesis.core.jsonschema.types import JsonValue
from schemathesis.core.result import Err, Ok
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy.orm import Session

from app.api import tokens
from app.audit import AuditContext
from app.extensions import get_cipher
from app.idp import clients as idp_clients
from app.models import ConnectedAccount, ProviderConfig, utcnow
from app.settings import Settings
from app.vault import Secret, put_secret
from tests.conftest import PASSWORD, TEST_KEY, UserFactory, make_settings, sign_in
from tests.support.hostile import CONTROLS, DEEP_JSON, DEEPISH_JSON, HOSTILE_IDS, HOSTILE_SEGMENTS, HUGE, NUL, Tally
from tests.support.stream_upstream import StreamUpstream, running_upstream


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    # The fuzzer sends hundreds of requests a minute; the limits have their own tests.
    return make_settings(
        tmp_path,
        database_url,
        AMI_AUTH_API_RATE_PER_MINUTE="1000000",
        AMI_AUTH_API_IP_RATE_PER_MINUTE="1000000",
        AMI_AUTH_CMS_ORIGINS="https://cms.example.com",
    )


def _document(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    body: dict[str, Any] = response.get_json()
    return body


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    # The document is the root resource so "#/components/schemas/…" references resolve.
    root = {**schema, "components": document["components"]}
    return jsonschema.Draft202012Validator(root, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def _response_schema(document: dict[str, Any], path: str, method: str, status: int) -> dict[str, Any]:
    responses = document["paths"][path][method]["responses"]
    entry = responses.get(str(status), responses["default"])
    content = entry.get("content")
    assert content is not None, f"{method.upper()} {path} {status} is documented without a body"
    schema: dict[str, Any] = content["application/json"]["schema"]
    return schema


def test_the_document_is_valid_openapi_3_1(client: FlaskClient) -> None:
    document = _document(client)
    assert document["openapi"].startswith("3.1")
    validate_openapi(document)


def test_every_api_route_is_documented(app: Flask, client: FlaskClient) -> None:
    document = _document(client)
    api_rules = {
        (re.sub(r"<(?:\w+(?:\([^)]*\))?:)?(\w+)>", r"<\1>", rule.rule), method)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/")
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }
    documented = {
        (path.replace("{", "<").replace("}", ">"), method.upper())
        for path, item in document["paths"].items()
        for method in item
    }
    assert api_rules == documented
    undocumented = [
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method, op in item.items()
        if op.get("x-undocumented")
    ]
    assert undocumented == [], "describe these with app.api.registry.document"

    def header(response: dict[str, Any], name: str) -> dict[str, Any]:
        ref = response["headers"][name]["$ref"]
        found: dict[str, Any] = document["components"]["headers"][ref.rsplit("/", 1)[1]]
        return found

    operation_ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    # Stable, hand-written names a generated client's methods are called by.
    assert len(operation_ids) == len(set(operation_ids))
    assert all(re.fullmatch(r"[a-z][A-Za-z0-9]+", oid) for oid in operation_ids), operation_ids
    assert {"listUsers", "createProviderConfig", "getAccountHeaders", "getCurrentSession"} <= set(operation_ids)
    for path, item in document["paths"].items():
        for method, op in item.items():
            responses = op["responses"]
            assert "default" in responses and "429" in responses and "503" in responses, f"{method} {path}"
            assert header(responses["429"], "Retry-After")["required"] is True
            assert header(responses["503"], "Retry-After")["required"] is True
            # Unknown or repeated query parameters are refused everywhere.
            assert "422" in responses
            if "201" in responses:
                assert header(responses["201"], "Location")["required"] is True
            if op["security"]:
                assert "401" in responses
                assert header(responses["401"], "WWW-Authenticate")["required"] is True
                for option in op["security"]:
                    for name in option:
                        assert name in document["components"]["securitySchemes"]
            for status, response in responses.items():
                if status == "default" or int(status) >= 400:
                    assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_scopes_in_the_document_match_the_decorators(client: FlaskClient) -> None:
    document = _document(client)
    assert document["paths"]["/api/account-manager/providers/schema"]["get"]["x-required-scopes"] == ["providers:read"]
    assert document["paths"]["/api/users"]["get"]["x-required-scopes"] == ["users:read"]
    assert document["paths"]["/api/users/{user_id}/identities/{identity_id}"]["delete"]["x-required-scopes"] == [
        "users:write"
    ]
    sessions = document["paths"]["/api/auth/sessions/{session_id}"]["delete"]
    assert sessions["security"] == [{"serviceToken": ["sessions:write"]}, {"sessionCookie": []}]
    assert document["paths"]["/api/compliance/report"]["get"]["x-required-scopes"] == ["compliance:read"]
    assert document["paths"]["/api/auth/session"]["get"]["security"] == [{"sessionCookie": []}]
    assert document["paths"]["/api/openapi.json"]["get"]["security"] == []
    description = document["components"]["securitySchemes"]["serviceToken"]["description"]
    assert all(f"`{scope}`" in description for scope in tokens.SCOPES)


def _issue(db: Session, *scopes: str) -> str:
    raw = tokens.create_token(
        db, AuditContext(actor="test"), name="CMS", scopes=list(scopes) or list(tokens.SCOPES), created_by=None
    ).raw
    db.commit()
    return raw


def test_real_responses_match_the_documented_schemas(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory
) -> None:
    document = _document(client)
    admin = make_user("root@example.com", role="admin", display_name="Root")
    member = make_user("ann@example.com")
    sign_in(client, "root@example.com")
    member_client = app.test_client()
    sign_in(member_client, "ann@example.com")
    config = ProviderConfig(provider_type="openai", name="OpenAI", enabled=True, config={})
    db.add(config)
    db.flush()
    account = ConnectedAccount(
        provider_config_id=config.id,
        user_id=member.id,
        label="key",
        created_at=utcnow() - timedelta(days=400),
        last_error_code="invalid_credentials",
        last_error_hint="The key was revoked.",
        last_error_at=utcnow(),
    )
    spare = ConnectedAccount(provider_config_id=config.id, user_id=None, label="spare", status="pending")
    db.add_all([account, spare])
    db.flush()
    # The headers endpoint needs a stored key (made-up value; the response must carry it back).
    put_secret(db, get_cipher(app), "connected_account", account.id, "api_key", "sk-openapi-test-key", grace=None)
    db.commit()
    configs_path = "/api/account-manager/provider-configs"
    oidc_path = "/api/account-manager/oidc-clients"
    rp_body = {"name": "CMS", "redirect_uris": ["https://cms.example.com/api/auth/callback/ami"]}
    rp = idp_clients.create_client(db, AuditContext(actor="test"), rp_body).client
    db.commit()
    accounts_path = "/api/account-manager/accounts"
    account_path = f"{accounts_path}/{account.id}"
    raw = _issue(db)
    narrow = _issue(db, "sessions:read")
    csrf = client.get("/api/auth/session").get_json()["csrf_token"]
    member_session = member_client.get("/api/auth/session").get_json()["session"]["id"]
    anonymous = app.test_client()
    auth = {"Authorization": f"Bearer {raw}"}
    headers_path = "/api/account-manager/accounts/{account_id}/headers"
    proxy_path = "/api/account-manager/accounts/{account_id}/proxy/{path}"
    token_path = "/api/account-manager/accounts/{account_id}/token"

    calls: list[tuple[str, str, Callable[[], Any], int]] = [
        ("/api/auth/session", "get", lambda: client.get("/api/auth/session"), 200),
        ("/api/auth/session", "get", lambda: anonymous.get("/api/auth/session"), 401),
        ("/api/auth/sessions", "get", lambda: client.get("/api/auth/sessions"), 200),
        ("/api/auth/sessions", "get", lambda: client.get(f"/api/auth/sessions?user_id={member.id}"), 200),
        ("/api/auth/sessions", "get", lambda: client.get("/api/auth/sessions", headers=auth), 422),
        ("/api/auth/sessions", "get", lambda: client.get("/api/auth/sessions?user_id=9999", headers=auth), 404),
        ("/api/auth/sessions", "get", lambda: member_client.get(f"/api/auth/sessions?user_id={admin.id}"), 403),
        (
            "/api/auth/sessions/{session_id}",
            "delete",
            lambda: anonymous.delete(f"/api/auth/sessions/{member_session}"),
            401,
        ),
        (
            "/api/auth/sessions/{session_id}",
            "delete",
            lambda: client.delete(f"/api/auth/sessions/{member_session}"),
            403,
        ),
        (
            "/api/auth/sessions/{session_id}",
            "delete",
            lambda: client.delete(f"/api/auth/sessions/{member_session}", headers={"X-CSRFToken": csrf}),
            204,
        ),
        (
            "/api/auth/sessions/{session_id}",
            "delete",
            lambda: client.delete(f"/api/auth/sessions/{member_session}", headers=auth),
            404,
        ),
        ("/api/compliance/report", "get", lambda: client.get("/api/compliance/report"), 200),
        ("/api/compliance/report", "get", lambda: client.get("/api/compliance/report", headers=auth), 200),
        (
            "/api/compliance/report",
            "get",
            lambda: client.get("/api/compliance/report", headers={"Authorization": f"Bearer {narrow}"}),
            403,
        ),
        ("/api/openapi.json", "get", lambda: anonymous.get("/api/openapi.json"), 200),
        (
            headers_path,
            "get",
            lambda: client.get(f"/api/account-manager/accounts/{account.id}/headers", headers=auth),
            200,
        ),
        (headers_path, "get", lambda: client.get("/api/account-manager/accounts/9999/headers", headers=auth), 404),
        (headers_path, "get", lambda: anonymous.get(f"/api/account-manager/accounts/{account.id}/headers"), 401),
        (
            headers_path,
            "get",
            lambda: client.get(
                f"/api/account-manager/accounts/{account.id}/headers", headers={"Authorization": f"Bearer {narrow}"}
            ),
            403,
        ),
        # The proxy and the token handout: what AMI Auth itself answers (the provider's answers pass through).
        (proxy_path, "get", lambda: client.get(f"{accounts_path}/9999/proxy/v1/models", headers=auth), 404),
        (proxy_path, "get", lambda: anonymous.get(f"{account_path}/proxy/v1/models"), 401),
        (
            proxy_path,
            "get",
            lambda: client.get(f"{account_path}/proxy/v1/models", headers={"Authorization": f"Bearer {narrow}"}),
            403,
        ),
        (proxy_path, "post", lambda: client.post(f"{account_path}/proxy/v2/files", headers=auth), 403),
        (proxy_path, "put", lambda: client.put(f"{account_path}/proxy/v1/models", headers=auth), 405),
        (proxy_path, "patch", lambda: client.patch(f"{account_path}/proxy/v1/models", headers=auth), 405),
        (proxy_path, "delete", lambda: client.delete(f"{account_path}/proxy/v1//models", headers=auth), 422),
        (token_path, "post", lambda: client.post(f"{account_path}/token", headers=auth), 404),
        (token_path, "post", lambda: anonymous.post(f"{account_path}/token"), 401),
        # Provider configs: non-secret fields only.
        (configs_path, "get", lambda: client.get(configs_path, headers=auth), 200),
        (configs_path, "get", lambda: client.get(f"{configs_path}?enabled=maybe", headers=auth), 422),
        (configs_path, "get", lambda: anonymous.get(configs_path), 401),
        (
            configs_path,
            "post",
            lambda: client.post(configs_path, json={"provider_type": "anthropic", "name": "Claude"}, headers=auth),
            201,
        ),
        (
            configs_path,
            "post",
            lambda: client.post(
                configs_path,
                json={"provider_type": "google", "name": "G", "config": {"client_secret": "x"}},
                headers=auth,
            ),
            422,
        ),
        (
            configs_path,
            "post",
            lambda: client.post(configs_path, json={"provider_type": "openai", "name": "openai"}, headers=auth),
            409,
        ),
        (f"{configs_path}/{{config_id}}", "get", lambda: client.get(f"{configs_path}/{config.id}", headers=auth), 200),
        (f"{configs_path}/{{config_id}}", "get", lambda: client.get(f"{configs_path}/9999", headers=auth), 404),
        (
            f"{configs_path}/{{config_id}}",
            "patch",
            lambda: client.patch(f"{configs_path}/{config.id}", json={"name": "OpenAI (prod)"}, headers=auth),
            200,
        ),
        (
            f"{configs_path}/{{config_id}}",
            "patch",
            lambda: client.patch(f"{configs_path}/{config.id}", json={"config": {"api_key": "sk"}}, headers=auth),
            422,
        ),
        (
            f"{configs_path}/{{config_id}}",
            "delete",
            lambda: client.delete(f"{configs_path}/{config.id}", headers=auth),
            409,
        ),
        (
            f"{configs_path}/{{config_id}}/test",
            "post",
            lambda: client.post(f"{configs_path}/{config.id}/test", headers=auth),
            200,
        ),
        (
            f"{configs_path}/{{config_id}}/test",
            "post",
            lambda: client.post(f"{configs_path}/9999/test", headers=auth),
            404,
        ),
        # OpenID clients: register (the secret handed out once), read, change, rotate, delete.
        (oidc_path, "get", lambda: client.get(oidc_path, headers=auth), 200),
        (oidc_path, "post", lambda: client.post(oidc_path, json={**rp_body, "name": "Other"}, headers=auth), 201),
        (oidc_path, "post", lambda: client.post(oidc_path, json={"name": "X", "jwks_uri": 1}, headers=auth), 422),
        (f"{oidc_path}/{{client_id}}", "get", lambda: client.get(f"{oidc_path}/{rp.client_id}", headers=auth), 200),
        (f"{oidc_path}/{{client_id}}", "get", lambda: client.get(f"{oidc_path}/nope", headers=auth), 404),
        (
            f"{oidc_path}/{{client_id}}",
            "patch",
            lambda: client.patch(f"{oidc_path}/{rp.client_id}", json={"first_party": True}, headers=auth),
            200,
        ),
        (
            f"{oidc_path}/{{client_id}}",
            "patch",
            lambda: client.patch(f"{oidc_path}/{rp.client_id}", json={"redirect_uris": ["x"]}, headers=auth),
            422,
        ),
        (
            f"{oidc_path}/{{client_id}}/secret",
            "post",
            lambda: client.post(f"{oidc_path}/{rp.client_id}/secret", headers=auth),
            200,
        ),
        (
            f"{oidc_path}/{{client_id}}/secret",
            "post",
            lambda: client.post(f"{oidc_path}/nope/secret", headers=auth),
            404,
        ),
        (
            f"{oidc_path}/{{client_id}}",
            "delete",
            lambda: client.delete(f"{oidc_path}/{rp.client_id}", headers=auth),
            204,
        ),
        # Accounts: snapshots, refresh, revoke, delete, and the one endpoint that discloses a credential.
        (accounts_path, "get", lambda: client.get(accounts_path, headers=auth), 200),
        (accounts_path, "get", lambda: client.get(f"{accounts_path}?status=broken", headers=auth), 422),
        (f"{accounts_path}/{{account_id}}", "get", lambda: client.get(account_path, headers=auth), 200),
        (f"{accounts_path}/{{account_id}}", "get", lambda: client.get(f"{accounts_path}/9999", headers=auth), 404),
        # The provider cannot be reached (tests resolve no name but localhost): an outage, not a bad key — 502.
        (
            f"{accounts_path}/{{account_id}}/refresh",
            "post",
            lambda: client.post(f"{account_path}/refresh", headers=auth),
            502,
        ),
        (
            f"{accounts_path}/{{account_id}}/refresh",
            "post",
            lambda: client.post(f"{accounts_path}/{spare.id}/refresh", headers=auth),
            409,
        ),
        (
            f"{accounts_path}/{{account_id}}/revoke",
            "post",
            lambda: client.post(f"{account_path}/revoke", headers=auth),
            200,
        ),
        # An admin's cookie is a credential of the wrong kind here: 403, not 401.
        (f"{accounts_path}/{{account_id}}/headers", "get", lambda: client.get(f"{account_path}/headers"), 403),
        (
            f"{accounts_path}/{{account_id}}/headers",
            "get",
            lambda: client.get(f"{account_path}/headers", headers=auth),
            409,
        ),
        (
            "/api/account-manager/dialogs",
            "post",
            lambda: client.post(
                "/api/account-manager/dialogs",
                json={"kind": "add_account", "provider_config_id": config.id, "return_to": "https://cms.example.com/a"},
                headers=auth,
            ),
            201,
        ),
        (
            "/api/account-manager/dialogs",
            "post",
            lambda: client.post(
                "/api/account-manager/dialogs",
                json={"kind": "add_account", "provider_config_id": config.id, "return_to": "https://evil.example/"},
                headers=auth,
            ),
            422,
        ),
        (
            f"{accounts_path}/{{account_id}}",
            "delete",
            lambda: client.delete(f"{accounts_path}/{spare.id}", headers=auth),
            200,
        ),
        (
            "/api/account-manager/providers/schema",
            "get",
            lambda: client.get("/api/account-manager/providers/schema"),
            200,
        ),
        (
            "/api/account-manager/providers/schema",
            "get",
            lambda: client.get("/api/account-manager/providers/schema", headers={"Authorization": f"Bearer {narrow}"}),
            403,
        ),
        (
            "/api/account-manager/providers/schema",
            "get",
            lambda: anonymous.get("/api/account-manager/providers/schema"),
            401,
        ),
        (
            "/api/account-manager/providers/schema",
            "get",
            lambda: anonymous.get("/api/account-manager/providers/schema", headers=auth),
            200,
        ),
        # People.
        ("/api/users", "get", lambda: client.get("/api/users?q=example&limit=1", headers=auth), 200),
        ("/api/users", "get", lambda: client.get("/api/users?page=2", headers=auth), 422),
        (
            "/api/users",
            "post",
            lambda: client.post("/api/users", json={"email": "new@example.com", "role": "member"}, headers=auth),
            201,
        ),
        (
            "/api/users",
            "post",
            lambda: client.post("/api/users", json={"email": "root@example.com"}, headers=auth),
            409,
        ),
        ("/api/users/{user_id}", "get", lambda: client.get(f"/api/users/{member.id}", headers=auth), 200),
        ("/api/users/{user_id}", "get", lambda: client.get("/api/users/9999", headers=auth), 404),
        (
            "/api/users/{user_id}",
            "patch",
            lambda: client.patch(f"/api/users/{member.id}", json={"name": "Ann E."}, headers=auth),
            200,
        ),
        (
            "/api/users/{user_id}",
            "patch",
            lambda: client.patch(f"/api/users/{admin.id}", json={"role": "member"}, headers=auth),
            409,
        ),
        (
            "/api/users/{user_id}/invite",
            "post",
            lambda: client.post(f"/api/users/{member.id}/invite", headers=auth),
            409,
        ),
        (
            "/api/users/{user_id}/unlock",
            "post",
            lambda: client.post(f"/api/users/{member.id}/unlock", headers=auth),
            200,
        ),
        (
            "/api/users/{user_id}/mfa/reset",
            "post",
            lambda: client.post(f"/api/users/{member.id}/mfa/reset", headers=auth),
            200,
        ),
        (
            "/api/users/{user_id}/sessions",
            "get",
            lambda: client.get(f"/api/users/{member.id}/sessions", headers=auth),
            200,
        ),
        (
            "/api/users/{user_id}/sessions/{session_id}",
            "delete",
            lambda: client.delete(f"/api/users/{member.id}/sessions/0123456789abcdef", headers=auth),
            404,
        ),
        (
            "/api/users/{user_id}/identities",
            "get",
            lambda: client.get(f"/api/users/{member.id}/identities", headers=auth),
            200,
        ),
        (
            "/api/users/{user_id}/identities/{identity_id}",
            "delete",
            lambda: client.delete(f"/api/users/{member.id}/identities/9999", headers=auth),
            404,
        ),
        (
            "/api/users/{user_id}/disable",
            "post",
            lambda: client.post(f"/api/users/{admin.id}/disable", headers=auth),
            409,
        ),
        (
            "/api/users/{user_id}/disable",
            "post",
            lambda: client.post(f"/api/users/{member.id}/disable", headers=auth),
            200,
        ),
        (
            "/api/users/{user_id}/enable",
            "post",
            lambda: client.post(f"/api/users/{member.id}/enable", headers=auth),
            200,
        ),
        (
            "/api/users/{user_id}/sessions",
            "delete",
            lambda: client.delete(f"/api/users/{member.id}/sessions", headers=auth),
            200,
        ),
        *_webhook_calls(client, auth),
        *_connect_calls(client, auth, db, member.id, config.id),
    ]
    # (Before the calls below revoke that account's key, which clears its error.)
    report = client.get("/api/compliance/report").get_json()
    assert report["accounts_failing"][0]["last_error"]["code"] == "invalid_credentials"
    seen: set[tuple[str, str]] = set()
    for path, method, call, status in calls:
        response = call()
        assert response.status_code == status, (path, method, response.get_data(as_text=True))
        documented = document["paths"][path][method]["responses"]
        assert str(status) in documented, f"{method.upper()} {path} answered an undocumented {status}"
        seen.add((path, method))
        if status == 204:
            assert "content" not in documented["204"] and response.get_data() == b""
            continue
        _validator(document, _response_schema(document, path, method, status)).validate(response.get_json())
    every = {(path, method) for path, item in document["paths"].items() for method in item}
    assert seen == every, f"add a call for {sorted(every - seen)}"


# --- fuzzing ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    name: str
    headers: dict[str, str]
    cookies: dict[str, str]


def _connect_calls(
    client: FlaskClient, auth: dict[str, str], db: Session, user_id: int, closed_config_id: int
) -> list[tuple[str, str, Callable[[], Any], int]]:
    """End-user connect links: one on a config that allows it, one that does not, one for nobody."""
    open_config = ProviderConfig(
        provider_type="openai", name="OpenAI (end users)", enabled=True, config={"end_users_connect": True}
    )
    db.add(open_config)
    db.commit()
    path = "/api/account-manager/connect-links"
    body = {"provider_config_id": open_config.id, "user_id": user_id, "return_to": "https://cms.example.com/me"}
    return [
        (path, "post", lambda: client.post(path, json=body, headers=auth), 201),
        (
            path,
            "post",
            lambda: client.post(path, json={**body, "provider_config_id": closed_config_id}, headers=auth),
            409,
        ),
        (path, "post", lambda: client.post(path, json={**body, "user_id": 9999}, headers=auth), 404),
        (
            path,
            "post",
            lambda: client.post(path, json={**body, "return_to": "https://evil.example/"}, headers=auth),
            422,
        ),
    ]


def _webhook_calls(client: FlaskClient, auth: dict[str, str]) -> list[tuple[str, str, Callable[[], Any], int]]:
    """Register an endpoint for user.created, create a user (one pending delivery), read the log, redeliver."""
    path = "/api/account-manager/webhooks"
    made: dict[str, int] = {}

    def create() -> Any:
        response = client.post(path, json={"url": "http://127.0.0.1:9/hook", "events": ["user.created"]}, headers=auth)
        made["id"] = response.get_json()["endpoint"]["id"]
        client.post("/api/users", json={"email": "hooked@example.com", "role": "member"}, headers=auth)
        return response

    def first_delivery() -> int:
        log = client.get(f"{path}/{made['id']}/deliveries", headers=auth).get_json()["deliveries"]
        return int(log[0]["id"])

    one = f"{path}/{{endpoint_id}}"
    return [
        (path, "post", create, 201),
        (path, "post", lambda: client.post(path, json={"url": "http://10.0.0.1/", "events": []}, headers=auth), 422),
        (path, "get", lambda: client.get(path, headers=auth), 200),
        (one, "get", lambda: client.get(f"{path}/{made['id']}", headers=auth), 200),
        (one, "get", lambda: client.get(f"{path}/9999", headers=auth), 404),
        (one, "patch", lambda: client.patch(f"{path}/{made['id']}", json={"description": "CMS"}, headers=auth), 200),
        (f"{one}/deliveries", "get", lambda: client.get(f"{path}/{made['id']}/deliveries", headers=auth), 200),
        (
            f"{one}/deliveries/{{delivery_id}}/redeliver",
            "post",
            lambda: client.post(f"{path}/{made['id']}/deliveries/{first_delivery()}/redeliver", headers=auth),
            200,
        ),
        (
            f"{one}/rotate-secret",
            "post",
            lambda: client.post(f"{path}/{made['id']}/rotate-secret", json={}, headers=auth),
            200,
        ),
        (one, "delete", lambda: client.delete(f"{path}/{made['id']}", headers=auth), 204),
    ]


def _secrets(app: Flask, client: FlaskClient, raw_token: str, settings: Settings) -> list[str]:
    cookie = client.get_cookie("ami_session")
    assert cookie is not None
    serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
    raw_session_id = serializer.loads(cookie.value)["_user_id"]
    master_key = TEST_KEY.split(":", 1)[1]
    return [
        raw_token,
        raw_token[len(tokens.TOKEN_PREFIX) :],
        raw_session_id,
        cookie.value,
        PASSWORD,
        settings.secret_key,
        master_key,
        base64.b64decode(master_key).decode("latin-1"),
    ]


# Bodies whose acceptance a JSON Schema cannot say in full, so a schema-valid one may still be refused (422):
# a PATCH of provider-config values is checked merged with the stored ones (the per-type create bodies are
# exact: tests/integration/test_typescript_client.py asks ajv and the server the same bodies); whether an email
# address is acceptable is email-validator's call (no special-use domain, a real TLD); free-form `metadata` may
# hold any JSON but no control character. Everything else is checked for them (no 5xx, documented statuses and
# shapes, invalid data refused); tests/integration/test_users_api.py and test_provider_configs_api.py cover the rules.
# A webhook URL is accepted only when its host resolves and the outbound guard lets every address through (no
# internal address unless AMI_AUTH_OUTBOUND_ALLOW lists it): the network's answer, not a schema's
# (tests/integration/test_webhooks*.py cover it).
PER_TYPE_BODIES = frozenset(
    {
        "PATCH /api/account-manager/provider-configs/{config_id}",
        "POST /api/users",
        "PATCH /api/users/{user_id}",
        # An OpenID client's settings are checked together (private_key_jwt needs jwks_uri, a public client has no
        # client_credentials, openid with authorization_code): tests/integration/test_idp_clients.py covers them.
        "POST /api/account-manager/oidc-clients",
        "PATCH /api/account-manager/oidc-clients/{client_id}",
        "POST /api/account-manager/webhooks",
        "PATCH /api/account-manager/webhooks/{endpoint_id}",
    }
)


@pytest.fixture
def fuzz_upstream() -> Iterator[StreamUpstream]:
    """The keyed account's provider API for the proxy operations: a local stand-in, never the real vendor."""
    with running_upstream() as upstream:
        yield upstream


def test_fuzz_every_endpoint_from_the_document(
    app: Flask,
    client: FlaskClient,
    db: Session,
    make_user: UserFactory,
    settings: Settings,
    fuzz_upstream: StreamUpstream,
) -> None:
    """schemathesis against the live WSGI app: no 5xx, documented statuses and shapes, no secret in a body."""
    make_user("root@example.com", role="admin")
    make_user("ann@example.com")
    sign_in(client, "root@example.com")
    sign_in(app.test_client(), "ann@example.com")
    csrf = client.get("/api/auth/session").get_json()["csrf_token"]
    raw = _issue(db)
    cookie = client.get_cookie("ami_session")
    assert cookie is not None
    secrets = _secrets(app, client, raw, settings)
    # Something for the account and dialog endpoints to find: an enabled Anthropic config (id 1, the lowest id,
    # which the fuzzer tries first) with a keyless account and one whose key is stored. That key may appear
    # in one body only: the headers endpoint's, which hands it out by design.
    anthropic = ProviderConfig(provider_type="anthropic", name="Anthropic", enabled=True, config={})
    db.add(anthropic)
    db.flush()
    keyed = ConnectedAccount(
        provider_config_id=anthropic.id,
        label="keyed",
        status="active",
        identifiers={"base_url": fuzz_upstream.url},
    )
    # "spare" is deleted through the API after the fuzzing, whatever ids the generator drew (see below).
    spare = ConnectedAccount(provider_config_id=anthropic.id, label="spare", status="pending")
    db.add_all([keyed, ConnectedAccount(provider_config_id=anthropic.id, label="keyless", status="pending"), spare])
    db.flush()
    spare_id = spare.id
    api_key = "sk-ant-fuzz-" + "Q7x" * 14
    fuzz_upstream.add_key(api_key)
    put_secret(db, get_cipher(app), "connected_account", keyed.id, "api_key", Secret(api_key), grace=None)
    db.commit()
    callers = [
        Caller("token", {"Authorization": f"Bearer {raw}"}, {}),
        Caller("session", {"X-CSRFToken": csrf}, {"ami_session": cookie.value}),
        Caller("anonymous", {}, {}),
    ]
    document = _document(client)
    error_validator = _validator(document, {"$ref": "#/components/schemas/Error"})

    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app)
    # The callers below bring real credentials; generated (random) ones would only ever test the 401.
    schema.config.generation.update(with_security_parameters=False)
    results = list(schema.get_all_operations())
    invalid = [str(result.err()) for result in results if isinstance(result, Err)]
    assert invalid == []
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    # schemathesis leaves out the document's own URL; everything else is fuzzed.
    assert {op.label for op in operations} == {
        f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item
    } - {"GET /api/openapi.json"}
    statuses: dict[str, set[int]] = {}
    sent = 0

    def check(case: Any, caller: Caller, response: Any) -> None:
        nonlocal sent
        sent += 1
        label = f"{caller.name}: {case.method} {case.formatted_path}"
        assert response.status_code < 500, f"{label} answered {response.status_code}: {response.text}"
        statuses.setdefault(case.operation.label, set()).add(response.status_code)
        body = response.text
        if "ami-auth" in response.headers.get("Via", ""):
            # The provider's own answer, passed through by the proxy (any status, its own shape): only AMI
            # Auth's answers are held to the document. It must not carry the key the proxy added.
            assert "/proxy/" in case.formatted_path and api_key not in body and raw not in body, label
            return
        disclosed = case.operation.label == "GET /api/account-manager/accounts/{account_id}/headers"
        for secret in [*secrets, *([] if disclosed else [api_key])]:
            assert secret not in body, f"{label} leaked a secret"
        if response.status_code >= 400:
            error_validator.validate(json.loads(body))
        checks = [
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
            negative_data_rejection,
        ]
        # A token must name user_id when listing sessions (it has no "own"): valid by the schema, refused
        # by design, documented as 422. Cookie and anonymous calls have no such case.
        if caller.name != "token" and case.operation.label not in PER_TYPE_BODIES:
            checks.append(positive_data_acceptance)
        case.validate_response(response, checks=checks)

    # Ids in request bodies are drawn from the whole integer range, so whether the generator ever names a seeded
    # row depends on the document's shape. A known-good body per such operation goes through the same checks
    # first, so its success path is always exercised, whatever the generator draws.
    def send(case: Any) -> None:
        """One case, from every caller, through every check."""
        for caller in callers:
            check(case, caller, case.call(headers=dict(caller.headers), cookies=dict(caller.cookies)))

    by_label = {op.label: op for op in operations}
    good_dialog: JsonValue = {
        "kind": "add_account",
        "provider_config_id": anthropic.id,
        "return_to": "https://cms.example.com",
    }
    send(by_label["POST /api/account-manager/dialogs"].Case(body=good_dialog, media_type="application/json"))

    # The full run on SQLite; on PostgreSQL, whose part is what the database itself refuses (lengths, NUL, integer
    # ranges), fewer cases per operation keep the suite inside its time budget.
    examples = 12 if settings.database_url.startswith("postgresql") else 25
    # Reads first, deletes last, so that every operation still finds the seeded config and accounts.
    order = {"GET": 0, "POST": 1, "PATCH": 2, "DELETE": 3}
    for operation in sorted(operations, key=lambda op: order.get(op.method.upper(), 1)):
        has_inputs = any(True for _ in operation.iter_parameters()) or len(operation.body) > 0
        # Without any parameter or body there is nothing to make invalid.
        modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_inputs else (GenerationMode.POSITIVE,)
        for mode in modes:

            @given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis_settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Any) -> None:
                # run() is called inside this iteration, so `mode` is this iteration's.
                positive = mode == GenerationMode.POSITIVE  # noqa: B023
                if positive and "Idempotency-Key" in (case.headers or {}):
                    # A key names one intended creation: the generator's few values, reused with other bodies,
                    # are refused by design (tests/integration/test_idempotency.py). One key per case here.
                    case.headers["Idempotency-Key"] = f"fuzz-{uuid.uuid4()}"
                send(case)

            run()

    # Likewise a delete's success path, last: the spare account (already gone if the generator drew its id).
    send(by_label["DELETE /api/account-manager/accounts/{account_id}"].Case(path_parameters={"account_id": spare_id}))

    print(f"OpenAPI fuzz (schemathesis): {sent} requests, 0 x 5xx")  # a 5xx fails the run above
    # The fuzzer reached the endpoints for real, not only their 401s.
    assert 200 in statuses["GET /api/compliance/report"]
    assert 200 in statuses["GET /api/auth/sessions"]
    assert 401 in statuses["GET /api/auth/session"] and 200 in statuses["GET /api/auth/session"]
    assert statuses["DELETE /api/auth/sessions/{session_id}"] >= {401, 404}
    assert 200 in statuses["GET /api/account-manager/accounts"]
    assert 200 in statuses["DELETE /api/account-manager/accounts/{account_id}"]
    assert 201 in statuses["POST /api/account-manager/dialogs"]  # the known-good body's, at least
    # Past the scopes and the body checks, to the target lookup at least: which ids the derandomized generator
    # draws moves with the document.
    assert statuses["POST /api/account-manager/connect-links"] & {201, 404, 409}
    assert statuses["POST /api/account-manager/webhooks"] & {201, 422}
    assert 201 in statuses["POST /api/account-manager/provider-configs"]
    assert 200 in statuses["GET /api/account-manager/provider-configs"]
    proxy_get = "GET /api/account-manager/accounts/{account_id}/proxy/{path}"
    assert statuses[proxy_get] >= {401, 403}, statuses[proxy_get]


# --- hostile input the generator does not make ----------------------------------------------------------


def _body_keys(document: dict[str, Any], op: dict[str, Any]) -> list[str]:
    """The top-level keys of an operation's JSON body (after one $ref), so each can carry a hostile value."""
    schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    if "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return sorted(schema.get("properties", {})) or ["name"]


def _hostile_requests(document: dict[str, Any], path: str, op: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, URL, werkzeug request options) for one operation: NUL, invalid UTF-8, huge and out-of-range
    values in the path and query, and bodies that are deep, huge, not UTF-8, not JSON, or hold NUL."""
    parameters = op.get("parameters", [])
    in_path = [p["name"] for p in parameters if p["in"] == "path"]
    in_query = [p["name"] for p in parameters if p["in"] == "query"]

    def url(**values: str) -> str:
        return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), "1"), path)

    requests: list[tuple[str, str, dict[str, Any]]] = []
    for name in in_path:
        for value in [*HOSTILE_SEGMENTS, *(str(i) for i in HOSTILE_IDS)]:
            requests.append((f"path {name}={value[:12]}", url(**{name: value}), {}))
    for name in in_query:
        for value in ("a%00b", "%FF%FE", "9" * 5000, f"-{2**63}"):
            requests.append((f"query {name}={value[:12]}", f"{url()}?{name}={value}", {}))
        requests.append((f"query {name} repeated", f"{url()}?{name}=1&{name}=2", {}))
    requests.append(("header controls", url(), {"headers": {"User-Agent": "fuzz\x01\x1b"}}))
    if "requestBody" in op:
        keys = _body_keys(document, op)
        json_type = {"content_type": "application/json"}
        bodies: list[tuple[str, bytes | str]] = [
            ("deep JSON", DEEP_JSON),
            ("deep-ish JSON", DEEPISH_JSON),
            ("NUL in every string", json.dumps({k: NUL for k in keys})),
            ("controls in every string", json.dumps({k: CONTROLS for k in keys})),
            ("NUL in a key", json.dumps({"na\x00me": "x"})),
            ("invalid UTF-8", b'{"' + keys[0].encode() + b'": "\xff\xfe"}'),
            ("duplicate keys", f'{{"{keys[0]}": "a", "{keys[0]}": "b"}}'),
            ("huge", json.dumps({k: HUGE * 40 for k in keys})),
            ("huge integer", f'{{"{keys[0]}": {"9" * 5000}}}'),
            ("NaN", f'{{"{keys[0]}": NaN}}'),
            ("not JSON", "{"),
            ("a JSON array", "[]"),
        ]
        for kind, body in bodies:
            requests.append((f"body {kind}", url(), {"data": body, **json_type}))
        form = "&".join(f"{k}=x" for k in keys)
        requests.append(("body as a form", url(), {"data": form, "content_type": "application/x-www-form-urlencoded"}))
        requests.append(
            ("body as multipart", url(), {"data": {k: "x" for k in keys}, "content_type": "multipart/form-data"})
        )
        requests.append(("body as text", url(), {"data": "x", "content_type": "text/plain"}))
    return requests


def test_hostile_paths_queries_and_bodies_on_every_operation(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory
) -> None:
    """What the schema-driven generator does not send: NUL and invalid UTF-8 in paths, deep and malformed JSON,
    form bodies. Every operation, as a token, a session and nobody; no 5xx, and every refusal in the taxonomy."""
    make_user("root@example.com", role="admin")
    sign_in(client, "root@example.com")
    csrf = client.get("/api/auth/session").get_json()["csrf_token"]
    raw = _issue(db)
    callers = [
        ({"Authorization": f"Bearer {raw}"}, app.test_client()),
        ({"X-CSRFToken": csrf}, client),
        ({}, app.test_client()),
    ]
    document = _document(client)
    tally = Tally()
    for path, item in document["paths"].items():
        for method, op in item.items():
            for kind, url, options in _hostile_requests(document, path, op):
                for headers, caller in callers:
                    options_headers = {**headers, **options.get("headers", {})}
                    extra = {k: v for k, v in options.items() if k != "headers"}
                    response = caller.open(url, method=method.upper(), headers=options_headers, **extra)
                    tally.check(f"{kind}: {method.upper()} {url[:80]}", response)
                    if response.status_code >= 400:
                        assert response.mimetype == "application/json", f"{kind}: {method} {url[:80]}"
    tally.assert_clean("OpenAPI hostile pass")
    assert tally.sent > 500
