"""Hostile input is refused at the door (app/web/input_guard.py), with the taxonomy's answer on the field to blame
and the attempt audited; what browsers and API clients really send still goes through. SQLite and PostgreSQL.

The first four tests are the pre-sign-in cases the fuzz of issue 10 found answering 500.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import NotFound

from app import audit
from app.api import tokens
from app.audit import AuditContext
from app.models import AuditEvent, ServiceToken, User
from app.settings import Settings
from app.web.input_guard import JSON_MAX_BYTES, JSON_MAX_DEPTH, REFUSALS_AUDITED_PER_MINUTE
from tests.conftest import UserFactory, csrf_token, make_settings, sign_in
from tests.support.hostile import DEEP_JSON, error_shape_problem


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url, AMI_AUTH_THROTTLE_IP_PER_MINUTE="1000")


def _refusals(db: Session) -> list[AuditEvent]:
    db.expire_all()
    return list(db.scalars(select(AuditEvent).where(AuditEvent.action == "input.refused").order_by(AuditEvent.id)))


def _page(response: Any) -> str:
    assert error_shape_problem(response) is None, response.get_data(as_text=True)[:2000]
    return re.sub(r"\s+", " ", response.get_data(as_text=True))


def _error(response: Any) -> dict[str, Any]:
    assert response.mimetype == "application/json", response.get_data(as_text=True)[:500]
    body: dict[str, Any] = response.get_json()
    assert error_shape_problem(response) is None, body
    error: dict[str, Any] = body["error"]
    return error


def _token(db: Session, *scopes: str) -> dict[str, str]:
    raw = tokens.create_token(db, AuditContext(actor="test"), name="CMS", scopes=list(scopes), created_by=None).raw
    db.commit()
    return {"Authorization": f"Bearer {raw}"}


# --- the four pre-sign-in cases --------------------------------------------------------------------------


def test_an_id_beyond_32_bits_in_a_url_is_not_found(client: FlaskClient) -> None:
    response = client.get("/oauth/2147483648/login")
    html = _page(response)
    assert response.status_code == 404
    assert 'data-error-code="not_found"' in html and "Check the address" in html
    # The same for the other spellings of "no such id", and in the API: the route does not match.
    for path in ("/oauth/0/login", "/oauth/-1/login", "/oauth/99999999999999999999/login", "/oauth/\u0663/login"):
        assert client.get(path).status_code == 404, path
    answer = client.get("/api/account-manager/accounts/2147483648")
    assert answer.status_code == 404 and _error(answer)["code"] == "not_found"


def test_a_nul_in_the_sign_in_email_is_refused_on_the_field_and_audited(client: FlaskClient, db: Session) -> None:
    token = csrf_token(client, "/signin")
    response = client.post(
        "/signin",
        data={"email": "ann\x00@example.com", "password": "whatever", "csrf_token": token},
        headers={"User-Agent": "Fuzzer/1.0"},
    )
    html = _page(response)
    assert response.status_code == 422
    assert 'data-error-code="validation_failed"' in html
    assert "“email” holds a control character." in html
    assert "Remove control characters (such as NUL), then send the form again." in html
    assert re.search(r'data-field="email"><strong>email</strong>: Remove control characters', html)
    # The attempt is in the audit log (who, from where, which field and why; never the value), and the chain holds.
    [event] = _refusals(db)
    assert (event.actor, event.target, event.outcome) == ("anonymous", "POST /signin", "failure")
    assert event.details == {"method": "POST", "path": "/signin", "reason": "control_character", "field": "email"}
    assert event.ip == "127.0.0.1" and event.user_agent == "Fuzzer/1.0"
    assert "\x00" not in json.dumps(event.details) and "ann" not in json.dumps(event.details)
    assert audit.verify(db).ok


def test_a_file_where_the_reset_form_takes_an_email_is_refused_on_the_field(client: FlaskClient, db: Session) -> None:
    token = csrf_token(client, "/reset")
    response = client.post(
        "/reset",
        data={"email": (io.BytesIO(b"ann@example.com"), "email.txt"), "csrf_token": token},
        content_type="multipart/form-data",
    )
    html = _page(response)
    assert response.status_code == 422
    assert "“email” was sent as a file." in html and "This field takes text, not a file." in html
    [event] = _refusals(db)
    assert event.target == "POST /reset" and event.details["reason"] == "file_part"
    # The form as a browser sends it (multipart with text parts is a valid form encoding) still works.
    sent = client.post(
        "/reset", data={"email": "ann@example.com", "csrf_token": token}, content_type="multipart/form-data"
    )
    assert sent.status_code == 200 and "ann@example.com" in sent.get_data(as_text=True)


def test_deeply_nested_json_to_the_passkey_sign_in_is_refused(client: FlaskClient, db: Session) -> None:
    html = client.get("/signin").get_data(as_text=True)
    csrf = re.search(r'"X-CSRFToken": "([^"]+)"', html)
    assert csrf is not None
    response = client.post(
        "/signin/passkey/verify",
        data=DEEP_JSON,
        content_type="application/json",
        headers={"X-CSRFToken": csrf.group(1), "Accept": "application/json"},
    )
    error = _error(response)
    assert response.status_code == 422
    assert error["code"] == "validation_failed"
    assert error["message"] == f"The JSON nests deeper than {JSON_MAX_DEPTH} levels."
    [event] = _refusals(db)
    assert event.target == "POST /signin/passkey/verify" and event.details["reason"] == "json_nesting"


# --- the API ---------------------------------------------------------------------------------------------


def test_a_nul_in_an_api_path_is_refused_on_the_parameter_and_audited(client: FlaskClient, db: Session) -> None:
    auth = _token(db, "sessions:write", "accounts:headers")
    response = client.delete("/api/auth/sessions/abc%00def", headers=auth)
    error = _error(response)
    assert response.status_code == 400
    assert error["message"] == "The address holds a control character."
    assert error["fields"] == {"session_id": "Remove control characters (such as NUL or ESC) from this value."}
    [event] = _refusals(db)
    assert event.target == "DELETE /api/auth/sessions/<session_id>" and event.details["field"] == "session_id"
    # A read is refused the same way, and not audited (no action would have been).
    # (An id segment: no route takes "a\x00b" as an id, so there is no parameter name to blame.)
    read = client.get("/api/account-manager/accounts/a%00b/headers", headers=auth)
    assert read.status_code == 400 and _error(read)["message"] == "The address holds a control character."
    assert len(_refusals(db)) == 1
    assert audit.verify(db).ok


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message", "fields"),
    [
        ('{"name": "a\\u0000b"}', "application/json", 422, "“name” holds a control character.", ["name"]),
        ('{"config": {"x\\u001b": 1}}', "application/json", 422, "“config.x\ufffd” holds a control character.", None),
        ('{"name": "a", "name": "b"}', "application/json", 422, "The JSON repeats the key “name”.", ["name"]),
        ('{"name": NaN}', "application/json", 422, "The JSON holds a number that cannot be used.", []),
        (b'{"name": "\xff"}', "application/json", 422, "The JSON body is not UTF-8.", []),
        ('{"name": ', "application/json", 422, "The request body is not valid JSON: Expecting value at line 1", []),
        ("name=x", "application/x-www-form-urlencoded", 415, "The body must be JSON.", []),
        ('{"name": "x"}', "text/plain", 415, "The body must be JSON.", []),
    ],
)
def test_api_bodies_are_utf8_json_without_control_characters_or_duplicates(
    client: FlaskClient,
    db: Session,
    body: str | bytes,
    content_type: str,
    status: int,
    message: str,
    fields: list[str] | None,
) -> None:
    auth = _token(db, "providers:write")
    response = client.post("/api/account-manager/provider-configs", data=body, content_type=content_type, headers=auth)
    error = _error(response)
    assert response.status_code == status
    assert error["code"] == "validation_failed" and error["message"].startswith(message)
    if fields is not None:
        assert sorted(error["fields"]) == fields


def test_an_api_body_over_the_bound_is_refused_before_it_is_parsed(client: FlaskClient, db: Session) -> None:
    auth = _token(db, "providers:write")
    body = json.dumps({"provider_type": "openai", "name": "x" * JSON_MAX_BYTES})
    response = client.post(
        "/api/account-manager/provider-configs", data=body, content_type="application/json", headers=auth
    )
    assert response.status_code == 413
    assert _error(response)["message"] == "The JSON body is larger than 64 KiB."
    # Nested to the bound is fine as far as the guard goes (the endpoint then names the unknown key).
    nested = (
        '{"provider_type": "openai", "name": "N", "config": '
        + '{"a": ' * (JSON_MAX_DEPTH - 1)
        + "1"
        + "}" * JSON_MAX_DEPTH
    )
    answer = client.post(
        "/api/account-manager/provider-configs", data=nested, content_type="application/json", headers=auth
    )
    assert answer.status_code == 422 and "nests deeper" not in _error(answer)["message"]


def test_legitimate_text_still_goes_through(client: FlaskClient, db: Session, make_user: UserFactory) -> None:
    """Tabs and line breaks in a textarea, non-ASCII names, a JSON body with escapes, checkboxes sharing a name."""
    make_user("root@example.com", role="admin")
    sign_in(client, "root@example.com")
    token = csrf_token(client, "/admin/users/new")
    created = client.post(
        "/admin/users/new",
        data={
            "email": "zoë@example.com",
            "display_name": "Zoë\tÅström",
            "role": "member",
            "metadata": '{\r\n\t"team": "Ωmega"\r\n}',
            "mode": "password",
            "password": "a long enough password 42",
            "csrf_token": token,
        },
    )
    assert created.status_code == 302, created.get_data(as_text=True)[:2000]
    user = db.scalar(select(User).where(User.email == "zoë@example.com"))
    assert user is not None and user.display_name == "Zoë\tÅström" and user.user_metadata == {"team": "Ωmega"}
    # The token form's scope checkboxes share one name: a multi-valued field may repeat.
    made = client.post(
        "/admin/tokens/",
        data=MultiDict(
            [("name", "CMS"), ("scopes", "accounts:read"), ("scopes", "sessions:read"), ("csrf_token", token)]
        ),
    )
    assert made.status_code == 200, made.get_data(as_text=True)[:2000]
    record = db.scalar(select(ServiceToken).where(ServiceToken.name == "CMS"))
    assert record is not None and sorted(record.scopes) == ["accounts:read", "sessions:read"]
    csrf = client.get("/api/auth/session").get_json()["csrf_token"]
    body = '{"provider_type": "anthropic", "name": "Claude \\u00e9\\t(prod)"}'
    api = client.post(
        "/api/account-manager/provider-configs",
        data=body,
        content_type="application/json; charset=utf-8",
        headers={"X-CSRFToken": csrf, "Origin": "http://localhost"},
    )
    assert api.status_code in (201, 422), api.get_data(as_text=True)
    assert _refusals(db) == []


# --- forms, query strings and headers ---------------------------------------------------------------------


def test_form_routes_refuse_json_repeats_and_invalid_utf8_on_the_field(
    client: FlaskClient, db: Session, make_user: UserFactory
) -> None:
    make_user("ann@example.com")
    sign_in(client, "ann@example.com")
    token = csrf_token(client, "/account/")
    json_post = client.post(
        "/account/profile",
        data=json.dumps({"display_name": {"nested": 1}}),
        content_type="application/json",
        headers={"X-CSRFToken": token},
    )
    assert json_post.status_code == 415
    assert "This address takes a form, not application/json." in _page(json_post)
    repeated = client.post(
        "/account/profile", data=MultiDict([("display_name", "A"), ("display_name", "B"), ("csrf_token", token)])
    )
    assert repeated.status_code == 422 and "“display_name” was sent more than once." in _page(repeated)
    invalid = client.post(
        "/account/profile",
        data=f"csrf_token={token}&display_name=%FF%FE".encode(),
        content_type="application/x-www-form-urlencoded",
    )
    assert invalid.status_code == 422 and "“display_name” is not UTF-8 text." in _page(invalid)
    # Nothing was changed by any of them, and each refusal is in the audit log under the member's name.
    me = db.scalar(select(User).where(User.email == "ann@example.com"))
    assert me is not None and me.display_name == ""
    events = _refusals(db)
    assert [e.details["reason"] for e in events] == ["content_type", "repeated", "invalid_utf8"]
    assert {e.actor for e in events} == {"ann@example.com"}


def test_query_strings_and_headers_with_control_characters_are_refused(client: FlaskClient) -> None:
    nul = client.get("/signin?next=/account/%00")
    assert nul.status_code == 422 and "“next” holds a control character." in _page(nul)
    invalid = client.get("/admin/audit?action=%C3%28")
    assert invalid.status_code == 422 and "“action” is not UTF-8 text." in _page(invalid)
    header = client.get("/signin", headers={"User-Agent": "a\x01b"})
    assert header.status_code == 400 and "The request header User-Agent holds a control character." in _page(header)
    assert client.get("/signin?next=%2Faccount%2F").status_code == 200


def test_a_flood_of_refused_requests_is_audited_only_up_to_the_bound(client: FlaskClient, db: Session) -> None:
    token = csrf_token(client, "/signin")
    for _ in range(REFUSALS_AUDITED_PER_MINUTE + 5):
        response = client.post("/signin", data={"email": "\x00", "password": "x", "csrf_token": token})
        assert response.status_code == 422
    assert len(_refusals(db)) == REFUSALS_AUDITED_PER_MINUTE
    # Without a valid CSRF token nothing reaches the guard: refused as before, not audited.
    forged = client.post("/signin", data={"email": "\x00", "password": "x"})
    assert forged.status_code == 400 and "did not come from this site" in _page(forged)


def test_every_id_in_every_route_is_bounded(app: Flask) -> None:
    """Every <int:…> argument of every route, HTML and API: ID_MAX matches, one more matches nothing."""
    adapter = app.url_map.bind("localhost")
    argument = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")
    checked = 0
    for rule in app.url_map.iter_rules():
        if "<int" not in rule.rule:
            continue
        method = sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})[0]

        def path(value: int, rule_text: str = rule.rule) -> str:
            return argument.sub(lambda m: str(value) if m.group(1) == "int" else "x", rule_text)

        assert adapter.match(path(2**31 - 1), method=method)[0] == rule.endpoint, rule.rule
        for beyond in (2**31, 0):
            with pytest.raises(NotFound):
                adapter.match(path(beyond), method=method)
                pytest.fail(f"{path(beyond)} matched")
        checked += 1
    assert checked > 40
