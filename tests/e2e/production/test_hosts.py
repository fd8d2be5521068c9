"""Several hosts, for real (docs/operations.md, "Several hosts"): the stack's two app hosts — two gunicorn masters,
each with its own in-app scheduler — behind the documented nginx upstream, sharing PostgreSQL and Redis.

- a session made on host A works on host B, and a sign-out on B ends it on A at once;
- the sign-in throttle counts failures made on both hosts together;
- the scheduled token refresh (every worker of both hosts runs one) refreshes each due account once, counted
  at the real OpenID Provider, which refuses a second use of a rotated refresh token;
- a master-key rotation rolled host by host (each gunicorn stopped with SIGTERM while clients keep calling
  through nginx), then ``keys rewrap`` on host A: host B reads the rewrapped secrets. No GET fails during the
  stops; what becomes of POSTs is counted and asserted too.

A "browser" here talks to one host's gunicorn directly, with the headers nginx would add, so the test chooses
the host; everything else goes through nginx.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pytest
from sqlalchemy import func, select

from app.extensions import get_cipher, get_database, get_settings
from app.models import ConnectedAccount, StoredSecret, utcnow
from app.vault import put_secret
from tests.e2e.production.conftest import ProdUsers
from tests.support.accounts import make_account, make_config
from tests.support.oauth_app import add_due_accounts, create_config, generic_values
from tests.support.op import OPClient, OpenIDProvider, running_op
from tests.support.prod_stack import SCHEDULER_INTERVAL, Gunicorn, ProductionStack, metric_value

CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
DUE = 60


class Direct:
    """One browser (one cookie jar) talking to whichever host's gunicorn a test names, as nginx forwards it."""

    def __init__(self, stack: ProductionStack) -> None:
        self.stack = stack
        self.cookies: dict[str, str] = {}
        self.client = httpx.Client(trust_env=False, timeout=30, follow_redirects=False)

    def close(self) -> None:
        self.client.close()

    def request(self, host: Gunicorn, method: str, path: str, **data: str) -> httpx.Response:
        headers = {
            "Host": f"localhost:{self.stack.app_port}",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-For": "127.0.0.1",
            "Origin": self.stack.url,
        }
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        response = self.client.request(method, host.url + path, headers=headers, data=data or None)
        for header in response.headers.get_list("set-cookie"):
            name, _, rest = header.partition("=")
            value = rest.split(";", 1)[0]
            if value and "expires=thu, 01 jan 1970" not in header.lower():
                self.cookies[name] = value
            else:
                self.cookies.pop(name, None)
        return response

    def form(self, host: Gunicorn, path: str) -> str:
        """GET a page on ``host`` and return its form's CSRF token."""
        page = self.request(host, "GET", path)
        match = CSRF.search(page.text)
        assert page.status_code == 200 and match, (page.status_code, page.text[:300])
        return match.group(1)


@pytest.fixture
def browser(prod: ProductionStack) -> Iterator[Direct]:
    direct = Direct(prod)
    yield direct
    direct.close()


def test_a_session_made_on_one_host_works_on_the_other(
    prod: ProductionStack, prod_users: ProdUsers, browser: Direct
) -> None:
    a, b = prod.hosts
    user = prod_users.create(f"two-hosts-{secrets.token_hex(3)}@example.com")
    token = browser.form(a, "/signin")
    signed_in = browser.request(a, "POST", "/signin", email=user.email, password=user.password, csrf_token=token)
    assert signed_in.status_code == 302, signed_in.text[:500]

    on_b = browser.request(b, "GET", "/account/")
    assert on_b.status_code == 200 and user.email in on_b.text
    session = browser.request(b, "GET", "/api/auth/session")
    assert session.status_code == 200 and session.json()["user"]["email"] == user.email

    # Signed out on B: the same cookie is refused on A at the very next request (nothing is cached per host).
    cookie = dict(browser.cookies)
    signout = browser.request(b, "POST", "/signout", csrf_token=browser.form(b, "/account/"))
    assert signout.status_code in (302, 303)
    browser.cookies = cookie
    after = browser.request(a, "GET", "/account/")
    assert after.status_code == 302 and after.headers["Location"].startswith("/signin")


def test_the_sign_in_throttle_counts_failures_on_both_hosts_together(
    prod: ProductionStack, prod_users: ProdUsers, browser: Direct
) -> None:
    user = prod_users.create(f"throttled-{secrets.token_hex(3)}@example.com")
    answers = []
    for attempt in range(5):  # AMI_AUTH_THROTTLE_ACCOUNT_FAILURES: 5 — three on A, two on B
        host = prod.hosts[attempt % 2]
        token = browser.form(host, "/signin")
        wrong = browser.request(host, "POST", "/signin", email=user.email, password="not it at all", csrf_token=token)
        answers.append(wrong.status_code)
    # Either host alone saw at most three failures; together they are five: the account is locked everywhere.
    assert answers == [401, 401, 401, 401, 429]
    for host in prod.hosts:
        token = browser.form(host, "/signin")
        right = browser.request(host, "POST", "/signin", email=user.email, password=user.password, csrf_token=token)
        assert right.status_code == 429 and "Retry-After" in right.headers


def _seed_due(stack: ProductionStack, op: OpenIDProvider, user_id: int) -> list[int]:
    config_id = create_config(
        stack.app, "generic_oidc", f"Hosts OP {secrets.token_hex(3)}", generic_values(op.issuer, op.client)
    )
    minted = op.mint_refresh_tokens(DUE, scope="openid offline_access")
    app = stack.app
    with app.app_context():
        db = get_database(app).session()
        ids = [a.id for a in add_due_accounts(db, get_cipher(app), config_id, user_id, minted)]
        db.commit()
        return ids


def _not_yet_refreshed(stack: ProductionStack, ids: list[int]) -> int:
    app = stack.app
    with app.app_context():
        db = get_database(app).session()
        count = db.scalar(
            select(func.count())
            .select_from(ConnectedAccount)
            .where(ConnectedAccount.id.in_(ids), ConnectedAccount.expires_at <= utcnow())
        )
        db.rollback()
        return int(count or 0)


def _refreshes_counted(stack: ProductionStack) -> float:
    labels = {"provider_type": "generic_oidc", "outcome": "refreshed"}
    return sum(metric_value(stack.scrape(h), "ami_auth_token_refreshes_total", **labels) for h in stack.hosts)


def _wake_every_worker(stack: ProductionStack) -> None:
    """A burst of concurrent requests to each host, so every worker has served one (its scheduler starts then)."""
    with httpx.Client(trust_env=False, timeout=15) as client, ThreadPoolExecutor(max_workers=8) as pool:
        for host in stack.hosts:
            urls = [host.url + "/healthz"] * 24
            assert set(pool.map(lambda url: client.get(url).status_code, urls)) == {200}


def test_the_scheduled_refresh_runs_each_due_account_once_across_both_hosts(
    prod: ProductionStack, prod_users: ProdUsers
) -> None:
    client = OPClient("ami-auth-hosts", "hosts-op-secret")
    with running_op(clients=[client], rotateRefreshToken=True) as op:
        user = prod_users.create(f"refresh-owner-{secrets.token_hex(3)}@example.com")
        since = prod.log_offset()
        counted_before = _refreshes_counted(prod)
        ids = _seed_due(prod, op, user.id)
        op.reset_counts()
        _wake_every_worker(prod)

        deadline = time.monotonic() + 90
        while _not_yet_refreshed(prod, ids) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _not_yet_refreshed(prod, ids) == 0, "the schedulers did not refresh every due account"
        # Two more rounds of every scheduler: nothing is refreshed again.
        time.sleep(2 * float(SCHEDULER_INTERVAL) + 1)
        assert op.grant_count("refresh_token", 200) == DUE
        assert op.grant_count("refresh_token", 400) == 0  # a second use of a rotated token would be refused

    # Who did it: the schedulers' own log lines (one per run that refreshed something), by worker and host.
    runs = [
        (int(str(line["pid"])), int(m.group(1)))
        for line in map(json.loads, prod.app_log(since).splitlines())
        if line.get("logger") == "ami_auth.jobs.refresh"
        and (m := re.match(r"token refresh: refreshed (\d+)", str(line["message"])))
    ]
    assert sum(n for _, n in runs) == DUE, runs
    workers = {pid for pid, n in runs if n}
    hosts_of = {pid: host.name for host in prod.hosts for pid in host.worker_pids()}
    on = sorted({hosts_of.get(pid, "?") for pid in workers})
    # …and /metrics of the two hosts together counted each refresh once.
    assert _refreshes_counted(prod) == counted_before + DUE
    print(f"refreshed {DUE} accounts in {len(runs)} runs by {len(workers)} workers on {on}")


@dataclass
class Traffic:
    """Clients calling through nginx until told to stop: one reading a secret (GET), one creating dialog links
    (POST, not idempotent). Every answer is kept."""

    stack: ProductionStack
    reader: str
    writer: str
    account_id: int
    answers: dict[str, Counter[str]] = field(default_factory=lambda: {"GET": Counter(), "POST": Counter()})
    stop: threading.Event = field(default_factory=threading.Event)

    def _loop(self, method: str, pause: float) -> None:
        with self.stack.http() as client:
            while not self.stop.is_set():
                try:
                    if method == "GET":
                        response = client.get(
                            f"/api/account-manager/accounts/{self.account_id}/headers",
                            headers={"Authorization": f"Bearer {self.reader}"},
                        )
                    else:
                        response = client.post(
                            "/api/account-manager/dialogs",
                            json={
                                "kind": "replace_secret",
                                "account_id": self.account_id,
                                "return_to": self.stack.cms_url() + "/done",
                            },
                            headers={"Authorization": f"Bearer {self.writer}"},
                        )
                    self.answers[method][str(response.status_code)] += 1
                except httpx.HTTPError as exc:
                    self.answers[method][type(exc).__name__] += 1
                time.sleep(pause)

    def __enter__(self) -> Traffic:
        # Paced under the per-token API rate (600 a minute).
        self.threads = [
            threading.Thread(target=self._loop, args=("GET", 0.12), daemon=True),
            threading.Thread(target=self._loop, args=("POST", 0.25), daemon=True),
        ]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


def _new_key(kid: str) -> str:
    return f"{kid}:" + base64.b64encode(secrets.token_bytes(32)).decode()


def _rows_per_key(stack: ProductionStack) -> dict[str, int]:
    app = stack.app
    with app.app_context():
        db = get_database(app).session()
        rows = db.execute(select(StoredSecret.key_id, func.count()).group_by(StoredSecret.key_id)).all()
        db.rollback()
        return {kid: int(n) for kid, n in rows}


def test_a_key_rotation_rolled_host_by_host_under_traffic_loses_no_get(prod: ProductionStack) -> None:
    api_key = "sk-proj-hosts-rotation-" + secrets.token_hex(6)
    app = prod.app
    with app.app_context():
        db = get_database(app).session()
        cfg = make_config(db, get_cipher(app), get_settings(app), "openai", {"rotation_days": 90}, "OpenAI (hosts)")
        account = make_account(db, cfg, {}, "Rotation canary")
        put_secret(db, get_cipher(app), "connected_account", account.id, "api_key", api_key, grace=None)
        account.status = "active"  # as after a successful connection test (no stand-in needed to read it back)
        db.commit()
        account_id = account.id
    reader = prod.cli("tokens", "create", "hosts reader", "--scope", "accounts:headers").stdout.strip()
    writer = prod.cli("tokens", "create", "hosts writer", "--scope", "accounts:write").stdout.strip()
    old_ring = prod.env["AMI_AUTH_MASTER_KEYS"]
    new_ring = _new_key("prod2") + "," + old_ring  # the new key first (it encrypts), the old one still decrypts
    fail_timeout = 5.0  # docs/deployment.md: max_fails=1 fail_timeout=5s

    try:
        with Traffic(prod, reader, writer, account_id) as traffic:
            time.sleep(2)
            for host in prod.hosts:  # one host at a time: SIGTERM, wait for its requests, start with the new ring
                host.restart(AMI_AUTH_MASTER_KEYS=new_ring)
                time.sleep(fail_timeout + 1)  # nginx sends to it again only once its fail_timeout has passed
            time.sleep(2)
        # The ring is rolled out; the stack's own CLI and in-process app use it from now on too.
        prod.env["AMI_AUTH_MASTER_KEYS"] = new_ring
        prod.close_app()
        rewrapped = prod.cli("keys", "rewrap")
        assert rewrapped.returncode == 0, rewrapped.stderr
        assert set(_rows_per_key(prod)) == {"prod2"}  # every secret is on the new key now (rewrapped on "host A")
    finally:
        for host in prod.hosts:  # never leave the shared stack with a host down
            if not host.running:
                host.restart()

    gets, posts = traffic.answers["GET"], traffic.answers["POST"]
    print(f"during two host stops through nginx: GET {dict(gets)}, POST {dict(posts)}")
    assert set(gets) == {"200"} and gets["200"] > 50, f"a GET failed while a host stopped: {dict(gets)}"
    # A POST is never resent by nginx once a host may have seen it: any that met a host going away is a 502, never
    # a half-done request, and a graceful stop finishes the ones it accepted.
    assert set(posts) <= {"201", "502"} and posts["201"] > 20, dict(posts)

    # Host B reads what host A's rewrap wrote (B knows prod2 because the ring was rolled to it first).
    with httpx.Client(trust_env=False, timeout=15) as client:
        for host in prod.hosts:
            answer = client.get(
                f"{host.url}/api/account-manager/accounts/{account_id}/headers",
                headers={"Authorization": f"Bearer {reader}", "X-Forwarded-Proto": "https"},
            )
            assert answer.status_code == 200 and api_key in answer.text, (host.name, answer.text[:300])
