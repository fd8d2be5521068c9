"""The in-app scheduler: one daemon thread per serving process that runs the token refresh, then the webhook
deliveries (:mod:`app.jobs.webhooks`), every minute (``AMI_AUTH_SCHEDULER_INTERVAL`` seconds), and every tenth run
the check of accounts saved unverified (:mod:`app.jobs.unverified`) and the purge of finished webhook events.

It starts lazily on the first request a process serves (``ensure_started``, called from a
``before_app_request`` hook), so ``ami-auth`` CLI runs, migrations and gunicorn's master never start it,
and with ``--preload`` it starts in each worker after the fork rather than in the parent. Several workers
or hosts may each run one: accounts are claimed before they are refreshed (:mod:`app.jobs.refresh`).
Deployments that refresh from cron (``ami-auth tokens refresh``) set ``AMI_AUTH_SCHEDULER=false``.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from datetime import timedelta
from typing import Final

from flask import Flask

from app.extensions import get_cipher, get_database
from app.jobs import unverified
from app.jobs.refresh import run_refresh
from app.jobs.webhooks import deliver_due, delivery_client, purge_finished
from app.oauth.runtime import runtime

__all__ = ["INTERVAL", "RefreshScheduler", "ensure_started", "stop"]

log = logging.getLogger("ami_auth.jobs.scheduler")

# The refresh margin is 10 minutes by default, so a minute between runs leaves many chances per token.
INTERVAL: Final = 60.0
_EXTENSION_KEY: Final = "ami_scheduler"
_lock = threading.Lock()


class RefreshScheduler:
    """Runs :func:`app.jobs.refresh.run_refresh` every ``interval`` seconds until :meth:`stop`."""

    def __init__(self, app: Flask, interval: float = INTERVAL, workers: int = 2) -> None:
        self.app = app
        self.interval = interval
        self.workers = workers
        self.pid = os.getpid()
        self.runs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ami-token-refresh", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def run_once(self) -> None:
        try:
            run_refresh(runtime(self.app), get_database(self.app).engine, workers=self.workers)
        finally:
            # Webhook deliveries ride the same tick; a failed refresh run must not hold them back.
            self._deliver_webhooks()
        self.runs += 1
        if self.runs % unverified.EVERY_RUNS == 1:  # the first run, then every tenth
            unverified.run_verify_unverified(self.app)
            self._purge_webhook_events()

    def _deliver_webhooks(self) -> None:
        client = delivery_client(self.app.extensions["ami_settings"])
        db = get_database(self.app).session()
        try:
            deliver_due(db, client, get_cipher(self.app))
        finally:
            db.close()
            client.close()

    def _purge_webhook_events(self) -> None:
        days = self.app.extensions["ami_settings"].webhook_retention_days
        db = get_database(self.app).session()
        try:
            purge_finished(db, timedelta(days=days))
        finally:
            db.close()

    def _loop(self) -> None:
        # A random first delay spreads the workers of one deployment over the minute.
        wait = random.uniform(1.0, min(self.interval, 15.0))
        while not self._stop.wait(wait):
            try:
                self.run_once()
            except Exception:
                # The thread must outlive a bad run (database restarting, provider down); the next one retries.
                log.exception("token refresh run failed")
            wait = self.interval


def ensure_started(app: Flask) -> RefreshScheduler | None:
    """Start this process's scheduler once (cheap to call on every request); None when turned off."""
    scheduler = app.extensions.get(_EXTENSION_KEY)
    if isinstance(scheduler, RefreshScheduler) and scheduler.pid == os.getpid():
        return scheduler
    if not app.extensions["ami_settings"].scheduler:
        return None
    with _lock:
        scheduler = app.extensions.get(_EXTENSION_KEY)
        # A scheduler made in a parent process did not survive the fork (threads do not): start a new one.
        if not isinstance(scheduler, RefreshScheduler) or scheduler.pid != os.getpid():
            scheduler = RefreshScheduler(app, interval=app.extensions["ami_settings"].scheduler_interval)
            app.extensions[_EXTENSION_KEY] = scheduler
            scheduler.start()
            log.info("token refresh scheduler started (pid %s, every %.0fs)", scheduler.pid, scheduler.interval)
    return scheduler


def stop(app: Flask) -> None:
    scheduler = app.extensions.pop(_EXTENSION_KEY, None)
    if isinstance(scheduler, RefreshScheduler):
        scheduler.stop()
