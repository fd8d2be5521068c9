"""What issue 14's sign-in additions cost per sign-in, against a plain password sign-in measured in the same run.

In-process (Flask's test client, a temp SQLite database migrated to head, default argon2 parameters), one user
per client so no throttle interferes. Each round times N sign-ins of each kind, alternating, and prints the
median of the per-round ratios (kind / baseline; above 1 is slower):

* baseline: password sign-in (GET /signin, POST /signin -> 302) with new-device alerts off;
* ``alerts_known``: the same with new-device alerts on, from a browser the account knows (the check, no mail);
* ``alerts_new``: alerts on, from a browser the account does not know (the check and the alert mail, kept in the
  outbox as in development);
* ``email_code``: a mailed-code sign-in (POST /signin/code, read the code from the outbox, POST the code).

Asserts nothing; takes about a minute. Usage: ``python bench/signin_methods.py [--rounds 5] [--per-round 6]``.
"""

from __future__ import annotations

import argparse
import base64
import re
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app import create_app
from app.auth import users
from app.extensions import get_database
from app.migrate import upgrade
from app.models import MailOutbox
from app.settings import load_settings

PASSWORD = "benchmark pass phrase for sign-in"
CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


def make_app(tmp: Path, name: str, **env: str) -> Flask:
    settings = load_settings(
        {
            "AMI_AUTH_ENV": "development",
            "AMI_AUTH_INSTANCE_DIR": str(tmp / name),
            "AMI_AUTH_DATABASE_URL": f"sqlite:///{tmp / (name + '.db')}",
            "AMI_AUTH_SECRET_KEY": secrets.token_urlsafe(48),
            "AMI_AUTH_MASTER_KEYS": "b1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
            "AMI_AUTH_BASE_URL": "http://127.0.0.1",
            "AMI_AUTH_SCHEDULER": "false",
            "AMI_AUTH_LOG_LEVEL": "WARNING",
            "AMI_AUTH_THROTTLE_IP_PER_MINUTE": "1000000",
            **env,
        }
    )
    (tmp / name).mkdir(exist_ok=True)
    upgrade(settings.database_url)
    return create_app(settings)


def add_user(app: Flask, email: str) -> None:
    with app.app_context():
        db = get_database(app).session()
        users.create_user(db, app.extensions["ami_settings"], email=email, password=PASSWORD, verified=True)
        db.commit()


def csrf(client: FlaskClient, path: str) -> str:
    match = CSRF.search(client.get(path).get_data(as_text=True))
    assert match, path
    return match.group(1)


def password_signin(client: FlaskClient, email: str) -> None:
    response = client.post(
        "/signin", data={"email": email, "password": PASSWORD, "csrf_token": csrf(client, "/signin")}
    )
    assert response.status_code == 302 and "/signin" not in response.headers["Location"], response.status_code
    client.post("/signout", data={"csrf_token": csrf(client, "/account/")})


def code_signin(app: Flask, client: FlaskClient, email: str) -> None:
    client.post("/signin/code", data={"email": email, "csrf_token": csrf(client, "/signin/code")})
    with app.app_context():
        db = get_database(app).session()
        text = db.scalars(select(MailOutbox.text).where(MailOutbox.to == email).order_by(MailOutbox.id.desc())).first()
        db.rollback()
    code = next(line for line in (text or "").splitlines() if line.isdigit() and len(line) == 6)
    response = client.post("/signin/code/enter", data={"code": code, "csrf_token": csrf(client, "/signin/code/enter")})
    assert response.status_code == 302, response.status_code
    client.post("/signout", data={"csrf_token": csrf(client, "/account/")})


def from_address(app: Flask, n: int) -> FlaskClient:
    """A new browser on its own client address (the mail throttle also counts per client address)."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = f"10.1.{n // 250}.{n % 250 + 1}"
    return client


def timed(count: int, one: Callable[[int], None]) -> float:
    start = time.perf_counter()
    for n in range(count):
        one(n)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        plain = make_app(tmp, "plain", AMI_AUTH_NEW_DEVICE_ALERTS="false")
        alerting = make_app(tmp, "alerting", AMI_AUTH_EMAIL_CODE_SIGNIN="true")
        for app in (plain, alerting):
            add_user(app, "runner@example.com")
        known = alerting.test_client()
        password_signin(known, "runner@example.com")  # the account's first browser: known from now on
        plain_client = plain.test_client()
        # The mail throttle allows a few mails per recipient per 15 minutes: the mailing kinds take one user each.
        total = args.rounds * args.per_round
        for n in range(total):
            add_user(alerting, f"new{n}@example.com")
            password_signin(alerting.test_client(), f"new{n}@example.com")  # a first browser (not announced)
            add_user(alerting, f"code{n}@example.com")
        fresh = iter(range(total))
        coded = iter(range(total))

        ratios: dict[str, list[float]] = {"alerts_known": [], "alerts_new": [], "email_code": []}
        for _ in range(args.rounds):
            base = timed(args.per_round, lambda _n: password_signin(plain_client, "runner@example.com"))
            ratios["alerts_known"].append(
                timed(args.per_round, lambda _n: password_signin(known, "runner@example.com")) / base
            )
            ratios["alerts_new"].append(
                timed(
                    args.per_round,
                    lambda _n: password_signin(from_address(alerting, n := next(fresh)), f"new{n}@example.com"),
                )
                / base
            )
            ratios["email_code"].append(
                timed(
                    args.per_round,
                    lambda _n: code_signin(alerting, from_address(alerting, n := next(coded)), f"code{n}@example.com"),
                )
                / base
            )
        print(f"baseline: password sign-in, alerts off ({args.rounds} rounds x {args.per_round})")
        for name, values in ratios.items():
            rounds = ", ".join(f"{v:.2f}" for v in values)
            print(f"{name:>13}: {statistics.median(values):.2f} x baseline (rounds: {rounds})")
        for app in (plain, alerting):
            get_database(app).remove()
            get_database(app).engine.dispose()


if __name__ == "__main__":
    main()
