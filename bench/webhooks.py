"""Webhook delivery benchmark: the delivery job against a bare httpx loop, both POSTing to the same receiver.

    PYTHONPATH=. python bench/webhooks.py [--events 2000] [--subjects 50]

``--events`` provider-config changes are made through the real service (each writes its outbox rows in the
change's transaction), spread over ``--subjects`` configs, for one endpoint; then, best of three rounds:

- **bare**: an httpx loop POSTing the same number of JSON bodies to the same local receiver (no signing, no
  database) — the floor for this receiver on this machine;
- **job**: ``app.jobs.webhooks.deliver_due`` — claim, order per subject, sign (Standard Webhooks, HMAC-SHA256),
  send through the guarded client, log the attempt, mark delivered; one transaction per delivery.

Also prints the cost of writing the outbox rows (events/s of the audited change with and without an endpoint
subscribed). Prints ratios; asserts nothing. SQLite in a temp dir.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/webhooks.py` from anywhere

import httpx
from sqlalchemy import update
from sqlalchemy.orm import Session

from app import create_app
from app.audit import AuditContext
from app.extensions import get_cipher, get_database
from app.jobs.webhooks import deliver_due, delivery_client
from app.migrate import upgrade
from app.models import utcnow
from app.models.webhooks import WebhookDelivery
from app.net import close_client
from app.providers import configs
from app.services import webhooks
from tests.conftest import make_settings

CTX = AuditContext(actor="bench")


def receiver() -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            self.send_response(204)
            self.send_header("content-length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/hook"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--subjects", type=int, default=50)
    args = parser.parse_args()
    server, url = receiver()
    tmp = Path(tempfile.mkdtemp())
    db_url = f"sqlite:///{tmp / 'bench.db'}"
    upgrade(db_url)
    app = create_app(make_settings(tmp, db_url))
    cipher = get_cipher(app)
    settings = app.extensions["ami_settings"]
    engine = get_database(app).engine
    with Session(engine, expire_on_commit=False) as db:
        from app.providers.registry import entry  # (bench-local: the one provider type it uses)

        provider = entry("openai")
        cfgs = [
            configs.create_config(db, cipher, settings, CTX, provider, f"cfg {i}", {}, enabled=False)
            for i in range(args.subjects)
        ]
        db.commit()
        started = time.perf_counter()
        for i in range(args.events):
            cfg = cfgs[i % len(cfgs)]
            configs.set_enabled(db, CTX, cfg, not cfg.enabled)
            db.commit()
        unsubscribed = args.events / (time.perf_counter() - started)
        webhooks.create_endpoint(db, settings, cipher, CTX, url=url, events=["provider_config.changed"])
        db.commit()
        started = time.perf_counter()
        for i in range(args.events):
            cfg = cfgs[i % len(cfgs)]
            configs.set_enabled(db, CTX, cfg, not cfg.enabled)
            db.commit()
        subscribed = args.events / (time.perf_counter() - started)
    print(
        f"outbox write: {subscribed:.0f} audited changes/s with an endpoint subscribed, "
        f"{unsubscribed:.0f}/s without (ratio {subscribed / unsubscribed:.2f})"
    )

    body = json.dumps({"type": "provider_config.changed", "data": {"provider_config_id": 1}}).encode()
    bare_best = job_best = 0.0
    client = delivery_client(settings)
    for _ in range(3):
        with httpx.Client(trust_env=False) as bare:
            started = time.perf_counter()
            for _ in range(args.events):
                bare.post(url, content=body, headers={"content-type": "application/json"})
            bare_best = max(bare_best, args.events / (time.perf_counter() - started))
        with Session(engine) as db:
            db.execute(update(WebhookDelivery).values(state="pending", next_attempt_at=utcnow(), attempts=0))
            db.commit()
            started = time.perf_counter()
            report = deliver_due(db, client, cipher, limit=args.events * 2)
            elapsed = time.perf_counter() - started
            assert report.delivered == args.events, report.summary()
            job_best = max(job_best, args.events / elapsed)
    client.close()
    print(
        f"delivery: job {job_best:.0f}/s, bare httpx loop {bare_best:.0f}/s (ratio job/bare {job_best / bare_best:.2f})"
    )
    close_client(app)
    get_database(app).remove()
    engine.dispose()
    server.shutdown()
    server.server_close()


if __name__ == "__main__":
    main()
