"""A local stand-in for the HIBP Pwned Passwords range API (https://haveibeenpwned.com/API/v3#PwnedPasswords).

``GET /range/{first 5 hex of SHA-1}`` answers ``text/plain`` lines ``SUFFIX:COUNT`` (35 upper-case hex
characters, a colon, a count), CRLF-separated as the real service does. With the request header
``Add-Padding: true`` it adds decoy lines with a count of 0, as HIBP does, so a client must not treat
a matching suffix with count 0 as breached.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def sha1_hex(password: str) -> str:
    return hashlib.sha1(password.encode("utf-8")).hexdigest().upper()


@dataclass
class RangeApi:
    breached: dict[str, int] = field(default_factory=dict)  # password -> count
    padding_passwords: set[str] = field(default_factory=set)  # listed with count 0, like padding
    status: int = 200
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    url: str = ""

    def body_for(self, prefix: str, padding: bool) -> str:
        lines: list[str] = []
        for password, count in self.breached.items():
            digest = sha1_hex(password)
            if digest.startswith(prefix):
                lines.append(f"{digest[5:]}:{count}")
        if padding:
            for password in self.padding_passwords:
                digest = sha1_hex(password)
                if digest.startswith(prefix):
                    lines.append(f"{digest[5:]}:0")
            lines.extend(f"{secrets.token_hex(18).upper()[:35]}:0" for _ in range(20))
        return "\r\n".join(lines)


def _handler(api: RangeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            api.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            match = re.fullmatch(r"/range/([0-9A-Fa-f]{5})", self.path)
            if match is None:
                self._send(400, "The hash prefix was not in a valid format")
                return
            if api.status != 200:
                self._send(api.status, "unavailable")
                return
            padding = self.headers.get("Add-Padding", "").lower() == "true"
            self._send(200, api.body_for(match.group(1).upper(), padding))

        def _send(self, status: int, text: str) -> None:
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            return None

    return Handler


@contextmanager
def range_api(api: RangeApi | None = None) -> Iterator[RangeApi]:
    """Serve ``api`` on a free 127.0.0.1 port in a thread; ``api.url`` is the base to configure."""
    api = api or RangeApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    api.url = f"http://127.0.0.1:{server.server_address[1]}/range"
    thread = threading.Thread(target=server.serve_forever, name="range-api", daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
