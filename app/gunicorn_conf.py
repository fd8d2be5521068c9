"""gunicorn settings for AMI Auth: ``gunicorn -c python:app.gunicorn_conf --workers 4 --bind … wsgi:app``.

It ships inside the package, so an installed release has it; ``gunicorn.conf.py`` in a checkout loads it too
(gunicorn reads that file from the working directory when no ``-c`` is given).

What it adds to the command line of docs/deployment.md (the production-shaped tests run with it):

* **Logs as JSON lines** (``app.logs``): gunicorn's error log through the app's handler on stderr. Its access
  log goes nowhere: it can only log the URL, and a URL can carry a token (``/reset/<token>``); the app writes one
  line per request itself, with the route template, status, duration, user and request id. So that gunicorn does
  not build the line anyway (it does whenever a log configuration is given: a tenth of a small request's time),
  its logger is :class:`Logger`, whose ``access`` does nothing.
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
* **What the master loaded is left out of the workers' garbage collection** (``pre_fork``: :func:`gc.freeze`,
  as the Python documentation advises for a server that forks without exec). The loaded app is some 190,000
  objects that live as long as the worker; without this, each full collection in a worker walked all of them
  while holding the interpreter lock, and every request of that worker (every proxied stream) stood still for
  it: 130 to 200 ms per full collection measured under 80 proxied streams, 10 to 15 ms with the freeze. The pages of
  memory they sit on also stay shared with the master instead of being copied into each worker.
* **Threaded workers** (``worker_class = "gthread"``, :data:`threads` per worker, ``AMI_AUTH_GUNICORN_THREADS``,
  default 256). A proxied stream (``/api/account-manager/accounts/<id>/proxy/…``, e.g. a streaming chat
  completion) holds its request for as long as the vendor streams: with the sync worker class a worker serves
  one request at a time, and two workers finished 12 of 200 concurrent streams while the sign-in page waited
  behind them. gthread gives every request a thread, and idle keep-alive connections wait in the worker's
  poller, not in a thread, so 2 workers of 256 threads hold 200 streams (however unevenly the kernel spreads
  them between the two) with threads to spare for the pages. Async workers (gevent, eventlet) were not
  chosen: they need the database driver, the Redis client and every blocking call patched, for a gain this
  I/O pattern does not need. The outbound pool (``AMI_AUTH_OUTBOUND_POOL_SIZE``, default 512 per worker) is
  kept above the threads, so a stream never waits for a connection another stream holds.
* **Audit events written before a worker exits** (``worker_exit``): a proxied call's event is handed to the
  worker's audit writer thread (``app.audit_batch.append(..., wait=False)``); what it still has queued is written first.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from gunicorn.glogging import Logger as _GunicornLogger

from app.logs import gunicorn_logconfig

# Before any worker imports prometheus_client: it picks its storage when it is first imported.
_OWN_DIR = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _OWN_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="ami-auth-metrics-")
METRICS_DIR = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])


class Logger(_GunicornLogger):  # type: ignore[misc]  # gunicorn has no type hints
    """gunicorn's logger without the access log (see the module docstring)."""

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        return None


logger_class = Logger
logconfig_dict = gunicorn_logconfig(os.environ.get("AMI_AUTH_LOG_LEVEL", "INFO").upper())
preload_app = True
worker_class = "gthread"
threads = int(os.environ.get("AMI_AUTH_GUNICORN_THREADS", "256"))


def on_starting(server: Any) -> None:
    METRICS_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    for stale in METRICS_DIR.glob("*.db"):
        stale.unlink()


def pre_fork(server: Any, worker: Any) -> None:
    gc.freeze()


def post_fork(server: Any, worker: Any) -> None:
    # SQLAlchemy, "Using Connection Pools with Multiprocessing": a child never uses its parent's pooled
    # connections (the master checked the database before forking; wsgi.py already disposed of them).
    from app.extensions import get_database  # not at the top: it imports prometheus_client (see above)

    app = server.app.wsgi()
    # bench/'s bare Flask baseline runs under this same configuration, and has no database.
    if "ami_db" in getattr(app, "extensions", {}):
        get_database(app).engine.dispose(close=False)


def worker_exit(server: Any, worker: Any) -> None:
    # What the worker's audit writer thread still has queued (app.audit_batch.append(..., wait=False)) is written
    # first.
    from app.audit_batch import drain  # not at the top: it imports prometheus_client (see above)

    drain()


def child_exit(server: Any, worker: Any) -> None:
    from app.metrics import mark_process_dead  # not at the top: prometheus_client must see the directory first

    mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    if _OWN_DIR:
        shutil.rmtree(METRICS_DIR, ignore_errors=True)
