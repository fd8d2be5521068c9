"""gunicorn settings for AMI Auth: ``gunicorn -c python:app.gunicorn_conf --workers 4 --bind … wsgi:app``.

It ships inside the package, so an installed release has it; ``gunicorn.conf.py`` in a checkout loads it too
(gunicorn reads that file from the working directory when no ``-c`` is given).

What it adds to the command line of docs/deployment.md (the production-shaped tests run with it):

* **Logs as JSON lines** (``app.logs``): gunicorn's error log through the app's handler on stderr. Its access
  log goes nowhere: it can only log the URL, and a URL can carry a token (``/reset/<token>``); the app writes one
  line per request itself, with the route template, status, duration, user and request id.
* **Metrics across workers** (``app.metrics``): ``PROMETHEUS_MULTIPROC_DIR`` names the directory where each
  worker keeps its counters; ``/metrics`` adds them up. Set it to a directory of this gunicorn's own (a tmpfs
  such as ``/run/ami-auth/metrics``), or leave it unset: then each start makes a fresh private one and removes
  it at exit. A directory you name is emptied at start (counters restart from zero with the server, which
  Prometheus expects; old files would be added to the new counts). ``child_exit`` tells the library a worker
  is gone.
* **The app loads before the socket opens** (``preload_app``): a host being restarted refuses connections until
  its app is loaded and its start-up checks have passed, so the proxy sends those requests to another host at
  once instead of parking them in this host's backlog while its workers import the app. Workers are forked
  from the loaded app; ``post_fork`` makes each drop the database connections it inherited.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from app.logs import gunicorn_logconfig

# Before any worker imports prometheus_client: it picks its storage when it is first imported.
_OWN_DIR = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _OWN_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="ami-auth-metrics-")
METRICS_DIR = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])

logconfig_dict = gunicorn_logconfig(os.environ.get("AMI_AUTH_LOG_LEVEL", "INFO").upper())
preload_app = True


def on_starting(server: Any) -> None:
    METRICS_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    for stale in METRICS_DIR.glob("*.db"):
        stale.unlink()


def post_fork(server: Any, worker: Any) -> None:
    # SQLAlchemy, "Using Connection Pools with Multiprocessing": a child never uses its parent's pooled
    # connections (the master checked the database before forking; wsgi.py already disposed of them).
    from app.extensions import get_database  # not at the top: it imports prometheus_client (see above)

    app = server.app.wsgi()
    # bench/'s bare Flask baseline runs under this same configuration, and has no database.
    if "ami_db" in getattr(app, "extensions", {}):
        get_database(app).engine.dispose(close=False)


def child_exit(server: Any, worker: Any) -> None:
    from app.metrics import mark_process_dead  # not at the top: prometheus_client must see the directory first

    mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    if _OWN_DIR:
        shutil.rmtree(METRICS_DIR, ignore_errors=True)
