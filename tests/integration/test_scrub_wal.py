"""Deleting an account on SQLite resets the write-ahead log (so the deleted ciphertext is gone from the -wal file
too). A reset waits for every reader of an older snapshot and holds every writer back while it waits: with a
long reader at work (a backup tool, a sqlite3 shell in a transaction), the delete used to hold the whole
deployment's writes for the connection's busy_timeout (10 s). Now it gives up quickly, and the next reset, once
the reader is gone, finishes the job."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from sqlalchemy.orm import Session

from app import create_app
from app.connectors import accounts
from app.connectors.headers import OWNER
from app.extensions import get_cipher, get_database
from app.net import get_client
from app.vault import put_secret
from tests.conftest import dispose_app, make_settings
from tests.support.accounts import CTX, make_account, make_config


def test_a_delete_while_another_process_reads_does_not_hold_back_other_writers(tmp_path: Path, sqlite_url: str) -> None:
    settings = make_settings(tmp_path, sqlite_url)
    app = create_app(settings)
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    wal = path.with_name(path.name + "-wal")
    try:
        cipher = get_cipher(app)
        with Session(get_database(app).engine) as db, app.app_context():
            cfg = make_config(db, cipher, settings, "generic_api_key", {"base_url": "https://api.example.com"})
            account = make_account(db, cfg, {"label": "Old key"})
            put_secret(db, cipher, OWNER, account.id, "api_key", "sk-old-" + "k" * 40, grace=None)
            db.commit()
            reader = sqlite3.connect(path, isolation_level=None)
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM connected_accounts").fetchone()  # a snapshot, held
            accounts.delete_account(db, cipher, get_client(app), CTX, account, skip_revoke=True)
            db.commit()
            scrub = threading.Thread(target=accounts.scrub_deleted, args=(db,))
            scrub.start()
            time.sleep(0.1)  # the reset is under way, waiting for the reader
            # Another writer of the deployment (its own connection, waiting at most 2 s for the write lock).
            writer = sqlite3.connect(path, timeout=2, isolation_level=None)
            try:
                writer.execute("BEGIN IMMEDIATE")  # "database is locked" if the reset still held writers back
                writer.execute("ROLLBACK")
            finally:
                writer.close()
            scrub.join(timeout=30)
            reader.execute("COMMIT")
            reader.close()
            assert wal.stat().st_size > 0  # the reader kept the log from being reset
            accounts.scrub_deleted(db)  # the next reset (the next delete, the purge job)
        assert wal.stat().st_size == 0
    finally:
        dispose_app(app)
