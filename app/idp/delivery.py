"""The thread that sends back-channel logouts (:mod:`app.idp.logout`) for one serving process.

It starts the first time a commit queued a delivery, sends what is due, and then sleeps until the next retry is
due or until woken by the next commit that queued one. With the in-app scheduler on (the production default) it
also sweeps every :data:`SWEEP` seconds, so rows another process queued but did not send (it died, or was a CLI
run) are taken up, and hourly purges expired codes and tokens. Outside a request (the CLI) a queued logout is sent
before the command returns. Deployments without the scheduler run ``ami-auth oidc logout deliver`` and
``ami-auth oidc purge`` from cron.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime
from typing import Any, Final

from flask import Flask, has_request_context
from sqlalchemy import event
from sqlalchemy.orm import Session

from app.extensions import get_database
from app.idp import tokens
from app.idp.keys import KeyRing
from app.idp.logout import PENDING, Run, deliver_due, purge_done
from app.models import utcnow
from app.net import get_client

log = logging.getLogger("ami_auth.idp.delivery")

SWEEP: Final = 60.0
PURGE_EVERY: Final = 3600.0
_EXTENSION_KEY: Final = "ami_idp_delivery"
_lock = threading.Lock()


class LogoutSender:
    def __init__(self, app: Flask, keyring: KeyRing, issuer: str) -> None:
        self.app = app
        self.keyring = keyring
        self.issuer = issuer
        self.pid = os.getpid()
        self.sweep = SWEEP if app.extensions["ami_settings"].scheduler else None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, now: datetime | None = None) -> Run:
        return deliver_due(get_database(self.app).engine, self.keyring, self.issuer, get_client(self.app), now)

    def purge(self, now: datetime | None = None) -> int:
        """Expired codes and tokens, old outbox rows (hourly, on the sweep)."""
        with Session(get_database(self.app).engine) as db:
            count = tokens.purge_expired(db, now) + purge_done(db, now)
            db.commit()
        return count

    def wake(self) -> None:
        if self._thread is None:
            with _lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="ami-oidc-logout", daemon=True)
                    self._thread.start()
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        purged_at = float("-inf")
        while not self._stop.is_set():
            self._wake.clear()
            wait = self.sweep
            try:
                if self.sweep is not None and time.monotonic() - purged_at > PURGE_EVERY:
                    self.purge()
                    purged_at = time.monotonic()
                run = self.run_once()
                if run.next_due is not None:
                    due_in = max(0.5, (run.next_due - utcnow()).total_seconds())
                    wait = due_in if wait is None else min(wait, due_in)
            except Exception:
                # The thread must outlive a bad run (database restarting); the next wake-up or sweep retries.
                log.exception("back-channel logout run failed")
                wait = 5.0
            self._wake.wait(wait)


def sender(app: Flask) -> LogoutSender | None:
    found = app.extensions.get(_EXTENSION_KEY)
    if isinstance(found, LogoutSender) and found.pid != os.getpid():
        # Made before a fork (gunicorn --preload): the thread did not come along; this worker starts its own.
        found = LogoutSender(app, found.keyring, found.issuer)
        app.extensions[_EXTENSION_KEY] = found
    return found if isinstance(found, LogoutSender) else None


def init_delivery(app: Flask, keyring: KeyRing, issuer: str) -> LogoutSender:
    """Wake the sender after every commit of the app's sessions that queued a logout."""
    logout_sender = LogoutSender(app, keyring, issuer)
    app.extensions[_EXTENSION_KEY] = logout_sender

    def _after_commit(session: Session) -> None:
        if not session.info.pop(PENDING, False):
            return
        current = sender(app)
        if current is None:
            return
        if has_request_context():
            current.wake()
        else:
            # A CLI command: no thread would outlive it, so send now.
            try:
                current.run_once()
            except Exception:
                log.exception("back-channel logout run failed")

    def _after_rollback(session: Session) -> None:
        session.info.pop(PENDING, None)

    factory: Any = get_database(app).sessions.session_factory
    event.listen(factory, "after_commit", _after_commit)
    event.listen(factory, "after_soft_rollback", lambda session, _previous: _after_rollback(session))
    return logout_sender


def stop_delivery(app: Flask) -> None:
    found = app.extensions.get(_EXTENSION_KEY)
    if isinstance(found, LogoutSender):
        found.stop()
