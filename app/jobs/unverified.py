"""Verify the API-key accounts an admin saved unverified while their vendor could not be reached
(``ami-auth jobs verify-unverified``, and the in-app scheduler every ``EVERY_RUNS`` runs): each becomes
active, failing, or stays unverified while the vendor still cannot be reached."""

from __future__ import annotations

from typing import Final

from flask import Flask

from app import audit
from app.connectors import accounts
from app.connectors.verify import Verification
from app.extensions import get_cipher, get_database
from app.models import ConnectedAccount
from app.net import get_client

JOB: Final = audit.AuditContext(actor="job:verify-unverified")
# The scheduler runs every minute; a vendor outage is not fixed in one, so try every ten.
EVERY_RUNS: Final = 10


def run_verify_unverified(app: Flask) -> list[tuple[ConnectedAccount, Verification]]:
    """Verify every unverified account once, committing each outcome (and its audit event)."""
    with app.app_context():
        db = get_database(app).session()
        try:
            results = []
            for result in accounts.verify_unverified(
                db, get_cipher(app), get_client(app), app.extensions["ami_settings"], JOB
            ):
                db.commit()  # this outcome and its audit event, before the next vendor call
                results.append(result)
            return results
        finally:
            get_database(app).remove()
