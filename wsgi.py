"""What gunicorn and `flask --app wsgi` load. Refuses to serve a misconfigured or unmigrated production."""

from __future__ import annotations

import sys

from app import create_app
from app.extensions import get_database
from app.preflight import preflight
from app.settings import SettingsError

try:
    app = create_app()
    problems = preflight(app, serving=True)
except SettingsError as exc:
    print(f"ami-auth: refusing to start: {exc}", file=sys.stderr)
    raise SystemExit(2) from None
if problems:
    for problem in problems:
        print(f"ami-auth: refusing to start: {problem}", file=sys.stderr)
    raise SystemExit(2)
# The checks' connections are not for the workers a preloading server (gunicorn --preload) forks from here.
get_database(app).engine.dispose()
