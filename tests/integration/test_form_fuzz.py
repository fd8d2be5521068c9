"""Every HTML route fuzzed with hostile input, beside the OpenAPI fuzzer: no 5xx, every refusal in the taxonomy.

The routes come from the app's URL map and their fields from the forms its own pages render (crawled as each
caller), so a new page or form is fuzzed without editing this file. Each caller sends a valid CSRF token, so
the requests reach the views rather than stopping at the CSRF check. On SQLite and PostgreSQL; deterministic
(a fixed seed picks the field each one-field mutation hits).
"""

from __future__ import annotations

import functools
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import delete
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Rule

from app.api import tokens
from app.audit import AuditContext
from app.extensions import get_cipher
from app.models import MfaPolicy
from app.settings import Settings
from app.web.input_guard import multi_valued_fields
from tests.conftest import UserFactory, csrf_token, make_settings, sign_in
from tests.support.accounts import make_account, make_config
from tests.support.hostile import CONTROLS, HOSTILE_IDS, HOSTILE_SEGMENTS, HUGE, NUL, Tally

SEED = 20_100_3
# Names to send to a POST route none of the crawled pages has a form for.
FALLBACK_FIELDS = ("email", "password", "name", "display_name", "code", "next")


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    # The fuzzer signs in and posts far faster than a person; the throttles have their own tests.
    return make_settings(
        tmp_path,
        database_url,
        AMI_AUTH_THROTTLE_IP_PER_MINUTE="1000000",
        AMI_AUTH_THROTTLE_ACCOUNT_FAILURES="100",
        AMI_AUTH_API_RATE_PER_MINUTE="1000000",
        AMI_AUTH_API_IP_RATE_PER_MINUTE="1000000",
    )


# --- the app's own forms --------------------------------------------------------------------------------


@dataclass
class FormSeen:
    action: str
    method: str
    names: list[str] = field(default_factory=list)


class _Forms(HTMLParser):
    """The forms of a page (and htmx elements that post on their own), with their field names."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.page = page
        self.forms: list[FormSeen] = []
        self.repeated: set[str] = set()
        self._open: FormSeen | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._open = FormSeen(a.get("action") or self.page, (a.get("method") or "get").lower())
            self.forms.append(self._open)
        elif "hx-post" in a:
            self.forms.append(FormSeen(a["hx-post"], "post", [a["name"]] if a.get("name") else []))
        name = a.get("name")
        if tag in ("input", "textarea", "select", "button") and name and name != "csrf_token" and self._open:
            if name not in self._open.names:
                self._open.names.append(name)
            elif tag == "input" and a.get("type") in ("checkbox", "hidden", "text", "email", "password"):
                self.repeated.add(name)  # sent as many times as it appears

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._open = None


@dataclass
class Caller:
    name: str
    client: FlaskClient
    email: str | None
    csrf: str = ""

    def refresh(self, db: Session) -> None:
        """Able to reach the routes again after a fuzzed request changed things (signed this caller out, made
        its role require a second factor), and the session's current CSRF token."""
        db.execute(delete(MfaPolicy))
        db.commit()
        if self.email is None:
            self.csrf = csrf_token(self.client, "/signin")
            return
        session = self.client.get("/api/auth/session")
        if session.status_code != 200:
            answer = sign_in(self.client, self.email)
            assert answer.status_code == 302, f"{self.name} cannot sign in again: {answer.get_data(as_text=True)}"
            session = self.client.get("/api/auth/session")
        self.csrf = session.get_json()["csrf_token"]


def _html_rules(app: Flask) -> list[Rule]:
    return sorted(
        (r for r in app.url_map.iter_rules() if not r.rule.startswith(("/api/", "/static/"))),
        key=lambda r: r.rule,
    )


_ARGUMENT = re.compile(r"<(?:(?P<converter>\w+)(?:\([^)]*\))?:)?(?P<name>\w+)>")


def _arguments(rule: Rule) -> list[tuple[str, str]]:
    """(converter, name) of each argument of the rule."""
    return [(m.group("converter") or "default", m.group("name")) for m in _ARGUMENT.finditer(rule.rule)]


def _fill(rule: Rule, ids: dict[str, int], override: dict[str, str] | None = None) -> str:
    """The rule's path with every argument filled: a seeded id, a word, or the override (already URL-safe)."""
    values = {}
    for converter, name in _arguments(rule):
        if override and name in override:
            values[name] = override[name]
        elif converter == "int":
            values[name] = str(ids.get(name, 1))
        else:
            values[name] = "fuzz"
    return _ARGUMENT.sub(lambda m: values[m.group("name")], rule.rule)


@dataclass
class Crawl:
    """What the app's pages render: field names per endpoint for POST forms and GET forms (query parameters),
    and the names a rendered form sends more than once (checkboxes sharing a name)."""

    posted: dict[str, list[str]] = field(default_factory=dict)
    queried: dict[str, list[str]] = field(default_factory=dict)
    repeated: set[str] = field(default_factory=set)


def _crawl(app: Flask, callers: list[Caller], ids: dict[str, int]) -> Crawl:
    """Every page each caller can GET, and the forms on it."""
    adapter = app.url_map.bind("localhost")
    crawl = Crawl()
    for caller in callers:
        for rule in _html_rules(app):
            if "GET" not in (rule.methods or ()) or rule.endpoint in ("auth.signout",):
                continue
            path = _fill(rule, ids)
            response = caller.client.get(path)
            if response.mimetype != "text/html":
                continue
            parser = _Forms(path)
            parser.feed(response.get_data(as_text=True))
            crawl.repeated |= parser.repeated
            for form in parser.forms:
                target = urlsplit(form.action)
                if target.netloc:
                    continue
                try:
                    endpoint, _ = adapter.match(target.path, method=form.method.upper())
                except HTTPException:
                    continue
                found = crawl.posted if form.method == "post" else crawl.queried
                names = found.setdefault(str(endpoint), [])
                names.extend(n for n in form.names if n not in names)
    return crawl


# --- hostile requests ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    kind: str
    path: str
    method: str
    body: bytes | None = None
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


@functools.cache
def _quoted(text: str) -> str:
    return quote(text, safe="")  # the huge values are the same every time: encoded once


def _urlencoded(pairs: list[tuple[str, str]]) -> bytes:
    return "&".join(f"{_quoted(k)}={_quoted(v)}" for k, v in pairs).encode()


_BOUNDARY = "fuzzboundary7MA4YWxk"


def _part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    kind = "Content-Type: text/plain\r\n" if filename else ""
    return f"Content-Disposition: {disposition}\r\n{kind}\r\n".encode() + value


def _multipart(kind: str, path: str, parts: list[bytes]) -> Attempt:
    """A multipart body built by hand, so a part can hold bytes no client library would send."""
    delimiter = f"--{_BOUNDARY}\r\n".encode()
    body = b"".join(delimiter + p + b"\r\n" for p in parts) + f"--{_BOUNDARY}--\r\n".encode()
    return Attempt(kind, path, "POST", body, f"multipart/form-data; boundary={_BOUNDARY}")


def _form_attempts(path: str, names: list[str], csrf: str, rng: random.Random) -> Iterator[Attempt]:
    """Hostile bodies for a form route; the CSRF token travels in the header too, so even a body that cannot
    be parsed reaches the view."""
    token = [("csrf_token", csrf)]
    one = rng.choice(names)
    form = "application/x-www-form-urlencoded"

    def each(value: str) -> bytes:
        return _urlencoded(token + [(n, value) for n in names])

    yield Attempt("nul", path, "POST", each(NUL), form)
    yield Attempt("controls", path, "POST", each(CONTROLS), form)
    yield Attempt("huge", path, "POST", each(HUGE), form)
    yield Attempt("one huge", path, "POST", _urlencoded([*token, (one, "é" * 200000)]), form)
    yield Attempt("nul name", path, "POST", _urlencoded([*token, (one + "\x00", "x")]), form)
    # Invalid UTF-8, percent-encoded (what a browser sends) and raw (what it never sends).
    yield Attempt(
        "invalid utf-8", path, "POST", b"&".join([_urlencoded(token), *(f"{n}=%FF%FE".encode() for n in names)]), form
    )
    yield Attempt("raw invalid utf-8", path, "POST", _urlencoded(token) + b"&" + one.encode() + b"=\xff\xc3(", form)
    yield Attempt(
        "repeated", path, "POST", _urlencoded(token + [(n, v) for n in names for v in ("first", "second")]), form
    )
    parts = [_part("csrf_token", csrf.encode())]
    yield _multipart("file parts", path, parts + [_part(n, b"file body", "fuzz.txt") for n in names])
    yield _multipart("multipart text", path, parts + [_part(n, b"plain") for n in names])
    yield _multipart("multipart invalid utf-8", path, parts + [_part(n, b"\xff\xfe(") for n in names])
    yield _multipart("multipart nul", path, parts + [_part(n, NUL.encode()) for n in names])
    values: list[Any] = [{"nested": [1, {"a": None}]}, [1, 2], 12345678901234567890, None, True]
    body = {n: values[i % len(values)] for i, n in enumerate(names)}
    yield Attempt("json", path, "POST", json.dumps(body).encode(), "application/json")
    yield Attempt("json nul", path, "POST", json.dumps({n: NUL for n in names}).encode(), "application/json")
    yield Attempt("text/plain", path, "POST", b"email=a@example.com\x00", "text/plain")
    yield Attempt("xml", path, "POST", b"<?xml version='1.0'?><a/>", "application/xml")


def _query_attempts(path: str, names: list[str]) -> Iterator[Attempt]:
    params = [*names, "next", "page"]
    yield Attempt("query nul", path + "?" + "&".join(f"{n}=a%00b" for n in params), "GET")
    yield Attempt("query invalid utf-8", path + "?" + "&".join(f"{n}=%FF%FE" for n in params), "GET")
    yield Attempt("query huge", path + "?" + "&".join(f"{n}={'9' * 4000}" for n in params), "GET")
    yield Attempt("query negative", path + "?" + "&".join(f"{n}=-{2**63}" for n in params), "GET")
    yield Attempt("query repeated", path + "?" + "&".join(f"{n}=a&{n}=b" for n in params), "GET")


def _path_attempts(rule: Rule, ids: dict[str, int], method: str, names: list[str], csrf: str) -> Iterator[Attempt]:
    body = _urlencoded([("csrf_token", csrf)] + [(n, "x") for n in names]) if method == "POST" else None
    content_type = "application/x-www-form-urlencoded" if method == "POST" else None
    for converter, name in _arguments(rule):
        hostile = [str(i) for i in HOSTILE_IDS] if converter == "int" else list(HOSTILE_SEGMENTS)
        for value in hostile:
            yield Attempt(f"path {name}={value[:12]}", _fill(rule, ids, {name: value}), method, body, content_type)
    yield Attempt("header controls", _fill(rule, ids), method, body, content_type, (("User-Agent", "fuzz\x01\x1b"),))


def _send(caller: Caller, attempt: Attempt) -> Any:
    headers = {"X-CSRFToken": caller.csrf, **dict(attempt.headers)}
    return caller.client.open(
        attempt.path, method=attempt.method, data=attempt.body, content_type=attempt.content_type, headers=headers
    )


def _seed(app: Flask, db: Session, settings: Settings, make_user: UserFactory) -> dict[str, int]:
    """Something for the id arguments to find: a user to act on (never a caller), a provider config, an
    account and a service token."""
    victim = make_user("victim@example.com")
    config = make_config(db, get_cipher(app), settings, "openai", {})
    account = make_account(db, config, {})
    token = tokens.create_token(db, AuditContext(actor="test"), name="CMS", scopes=["accounts:read"], created_by=None)
    db.commit()
    return {"user_id": victim.id, "config_id": config.id, "account_id": account.id, "token_id": token.record.id}


def test_every_html_route_answers_hostile_input_without_a_server_error(
    app: Flask, db: Session, settings: Settings, make_user: UserFactory
) -> None:
    make_user("root@example.com", role="admin")
    make_user("ann@example.com")
    ids = _seed(app, db, settings, make_user)
    callers = [
        Caller("anonymous", app.test_client(), None),
        Caller("member", app.test_client(), "ann@example.com"),
        Caller("admin", app.test_client(), "root@example.com"),
    ]
    for caller in callers:
        caller.refresh(db)
    crawl = _crawl(app, callers, ids)
    posted, queried = crawl.posted, crawl.queried
    # The crawl found the app's forms: sign-in, the profile, the console's user form.
    assert {"email", "password"} <= set(posted["auth.signin"])
    assert "display_name" in posted["account.profile"]
    assert "email" in posted["users_admin.create_user"]
    # A name a page sends more than once is one the guard lets repeat (the token form's scope checkboxes).
    assert "scopes" in crawl.repeated and crawl.repeated <= multi_valued_fields()

    rng = random.Random(SEED)
    tally = Tally()
    rules = _html_rules(app)
    for caller in callers:
        for rule in rules:
            # Members are not sent to the console: the anonymous and admin callers cover who may and may not.
            if caller.name == "member" and rule.rule.startswith("/admin"):
                continue
            caller.refresh(db)
            methods = sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})
            for method in methods:
                names = posted.get(rule.endpoint) or list(FALLBACK_FIELDS)
                attempts: list[Attempt] = list(_path_attempts(rule, ids, method, names, caller.csrf))
                path = _fill(rule, ids)
                if method == "POST":
                    attempts += _form_attempts(path, names, caller.csrf, rng)
                elif rule.endpoint != "static":
                    attempts += _query_attempts(path, queried.get(rule.endpoint, []))
                for attempt in attempts:
                    response = _send(caller, attempt)
                    tally.check(f"{caller.name}: {attempt.kind}: {method} {attempt.path[:80]}", response)
    tally.assert_clean("HTML form fuzz")
    assert tally.sent > 1500  # every route, every caller, every kind: a shrinking count means lost coverage
