"""GET /account/ for a user with 861 live sessions vs a user with 20 (one page), in one process (Flask's test client).

Run: python bench/account_page.py — prints the median server time of each and their ratio. Before the session
list was paged (issue 15) the page rendered every session; now it reads and renders one page (20), so the
ratio should stay near 1x however many sessions a user has. Asserts nothing; starts no process.
"""

from __future__ import annotations

import base64
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask.testing import FlaskClient

from app import create_app
from app.auth import sessions, users
from app.extensions import get_database
from app.migrate import upgrade
from app.settings import load_settings

SESSIONS = 861
ROUNDS = 60
PASSWORD = "bench passphrase 12345"


def timed(client: FlaskClient, path: str) -> float:
    started = time.perf_counter()
    response = client.get(path)
    assert response.status_code == 200, response.status_code
    return time.perf_counter() - started


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        upgrade(url)
        settings = load_settings(
            {
                "AMI_AUTH_ENV": "test",
                "AMI_AUTH_INSTANCE_DIR": tmp,
                "AMI_AUTH_DATABASE_URL": url,
                "AMI_AUTH_SECRET_KEY": "s" * 48,
                "AMI_AUTH_MASTER_KEYS": "b1:" + base64.b64encode(b"k" * 32).decode(),
                "AMI_AUTH_SCHEDULER": "false",
                "AMI_AUTH_MFA_REQUIRED_ROLES": "",
                "AMI_AUTH_LOG_LEVEL": "WARNING",
            }
        )
        app = create_app(settings)
        with app.app_context():
            db = get_database(app).session()
            many = users.create_user(db, settings, email="many@example.com", password=PASSWORD, verified=True)
            page_full = users.create_user(db, settings, email="one@example.com", password=PASSWORD, verified=True)
            for n in range(sessions.SESSION_PAGE_SIZE - 1):
                sessions.start_session(
                    db, settings, page_full, ip=f"10.1.0.{n + 1}", user_agent="curl/8", methods=["password"]
                )
            for n in range(SESSIONS - 1):
                sessions.start_session(
                    db, settings, many, ip=f"10.0.{n // 250}.{n % 250 + 1}", user_agent="curl/8", methods=["password"]
                )
            db.commit()
        clients = {}
        for email in ("one@example.com", "many@example.com"):
            client = app.test_client()
            page = client.get("/signin").get_data(as_text=True)
            token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
            assert token
            client.post("/signin", data={"email": email, "password": PASSWORD, "csrf_token": token.group(1)})
            clients[email] = client
        one: list[float] = []
        many_times: list[float] = []
        for _ in range(ROUNDS):  # alternating, so other load on the machine lands on both
            one.append(timed(clients["one@example.com"], "/account/"))
            many_times.append(timed(clients["many@example.com"], "/account/"))
        base, paged = statistics.median(one), statistics.median(many_times)
        size = sessions.SESSION_PAGE_SIZE
        print(f"GET /account/, {size} sessions (baseline): {base * 1000:.1f} ms median over {ROUNDS}")
        print(f"GET /account/, {SESSIONS} sessions (paged): {paged * 1000:.1f} ms median over {ROUNDS}")
        print(f"ratio: {paged / base:.2f}x the baseline")


if __name__ == "__main__":
    main()
