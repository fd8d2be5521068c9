"""GET /signin and /account/ in German vs English, in one process (Flask's test client).

Run: python bench/languages.py — prints the median server time of each page in each language and the German/English
ratio. Every string of these pages goes through gettext (issue 14); English reads no catalog, German reads the
compiled .mo (loaded once per process), so the ratio should stay near 1x. Asserts nothing; starts no process.
"""

from __future__ import annotations

import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask.testing import FlaskClient

from app import create_app
from app.auth import users
from app.extensions import get_database
from app.migrate import upgrade
from app.settings import load_settings
from bench.headers import environment

ROUNDS = 80
PASSWORD = "bench passphrase 12345"
LANGUAGES = {"English": "en-US,en;q=0.9", "German": "de-DE,de;q=0.9"}


def timed(client: FlaskClient, path: str, accept: str) -> float:
    started = time.perf_counter()
    response = client.get(path, headers={"Accept-Language": accept})
    assert response.status_code == 200, response.status_code
    return time.perf_counter() - started


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        upgrade(url)
        settings = load_settings(environment(url, Path(tmp)))  # the benches' test settings (bench/headers.py)
        app = create_app(settings)
        with app.app_context():
            db = get_database(app).session()
            users.create_user(db, settings, email="lena@example.com", password=PASSWORD, verified=True)
            db.commit()
        anonymous, signed_in = app.test_client(), app.test_client()
        page = signed_in.get("/signin").get_data(as_text=True)
        token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
        assert token
        form = {"email": "lena@example.com", "password": PASSWORD, "csrf_token": token.group(1)}
        signed_in.post("/signin", data=form)
        for path, client in (("/signin", anonymous), ("/account/", signed_in)):
            times: dict[str, list[float]] = {name: [] for name in LANGUAGES}
            for accept in LANGUAGES.values():  # warm-up: the German catalog loads on its first use
                timed(client, path, accept)
            for _ in range(ROUNDS):  # alternating, so other load on the machine lands on both
                for name, accept in LANGUAGES.items():
                    times[name].append(timed(client, path, accept))
            english, german = statistics.median(times["English"]), statistics.median(times["German"])
            print(f"GET {path}, English (baseline): {english * 1000:.1f} ms median over {ROUNDS}")
            print(f"GET {path}, German: {german * 1000:.1f} ms median over {ROUNDS}")
            print(f"ratio: {german / english:.2f}x the baseline")


if __name__ == "__main__":
    main()
