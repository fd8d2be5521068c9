"""A tiny CMS for browser tests: a static page (tests/e2e/cms_page) and two server-side routes that call the
AMI Auth API with a service token, the way the real CMS server does.

- ``GET /`` and ``GET /cms.js``: the page and its script (no inline script, like the CMS's own CSP would want).
- ``POST /cms/dialog``: asks ``POST /api/account-manager/dialogs`` for an add-account dialog and answers
  ``{"url": …}``. ``return_to`` is this page at the origin the browser used (from the Host header, and the
  scheme a TLS proxy in front forwards as X-Forwarded-Proto), unless ``return_origin`` fixes it (a page on a
  foreign origin framing a genuine dialog).
- ``GET /cms/accounts``: ``GET /api/account-manager/accounts`` through the token.

The browser never sees the token. Served on 127.0.0.1 in a thread; stop it with :meth:`CmsStandin.stop`.
Behind nginx (tests/support/prod_stack.py) the CMS is an https origin and calls AMI Auth's https URL,
trusting the test CA (``verify``).
"""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from flask import Flask
from sqlalchemy.orm import Session

from app.api import tokens
from app.audit import AuditContext
from app.extensions import get_cipher, get_database, get_settings
from tests.support.accounts import make_config

PAGE_DIR = Path(__file__).resolve().parent.parent / "e2e" / "cms_page"
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/cms.js": ("cms.js", "text/javascript; charset=utf-8")}


class CmsStandin:
    def __init__(
        self,
        port: int,
        api_base: str,
        token: str,
        provider_config_id: int,
        return_origin: str | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.port = port
        self.verify = verify
        self.api_base = api_base
        self.token = token
        self.provider_config_id = provider_config_id
        self.return_origin = return_origin
        self.dialog_answers: list[int] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, name=f"cms-{port}", daemon=True)

    def start(self) -> CmsStandin:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def _api(self, method: str, path: str, body: dict[str, object] | None = None) -> httpx.Response:
        with httpx.Client(base_url=self.api_base, timeout=10, verify=self.verify, trust_env=False) as client:
            return client.request(method, path, json=body, headers={"Authorization": f"Bearer {self.token}"})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        cms = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path in STATIC:
                    name, content_type = STATIC[path]
                    self._send(200, (PAGE_DIR / name).read_bytes(), content_type)
                elif path == "/cms/accounts":
                    answer = cms._api("GET", "/api/account-manager/accounts")
                    self._send(answer.status_code, answer.content, "application/json")
                else:
                    self._send(404, b"not found", "text/plain")

            def do_POST(self) -> None:
                if self.path != "/cms/dialog":
                    self._send(404, b"not found", "text/plain")
                    return
                scheme = self.headers.get("X-Forwarded-Proto", "http")
                origin = cms.return_origin or f"{scheme}://{self.headers['Host']}"
                answer = cms._api(
                    "POST",
                    "/api/account-manager/dialogs",
                    {
                        "kind": "add_account",
                        "provider_config_id": cms.provider_config_id,
                        "return_to": f"{origin}/?from=dialog",
                    },
                )
                cms.dialog_answers.append(answer.status_code)
                self._send(answer.status_code, json.dumps(answer.json()).encode(), "application/json")

        return Handler


def cms_credentials(app: Flask, provider_id: str, name: str) -> tuple[int, str]:
    """What an admin gives the CMS: an enabled provider config (``provider_id``) to add accounts to, and a service
    token with accounts:read and accounts:write. Returns (config id, raw token)."""
    with Session(get_database(app).engine, expire_on_commit=False) as db:
        cfg = make_config(db, get_cipher(app), get_settings(app), provider_id, {}, name=name)
        raw = tokens.create_token(
            db, AuditContext(actor="test"), name="CMS", scopes=["accounts:read", "accounts:write"], created_by=None
        ).raw
        db.commit()
        return cfg.id, raw
