"""Relying parties of AMI Auth's OpenID Provider as test peers: ``tests/peers/rp.mjs`` (openid-client v6 + jose),
and a cookie-keeping HTTP "browser" that walks AMI's own pages (sign-in, second factor, consent) the way a user's
browser would.

``running_rp()`` starts ``node rp.mjs`` on a free 127.0.0.1 port and stops it by PID. ``RelyingParty.call(op, ...)``
returns openid-client's result, or raises :class:`RPError` with what it said (``error``, ``status``...).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx

from tests.conftest import require_peer
from tests.support.live import free_port

PEERS = Path(__file__).resolve().parent.parent / "peers"
START_TIMEOUT = 20.0


class RPError(AssertionError):
    def __init__(self, op: str, error: Mapping[str, Any]) -> None:
        super().__init__(f"{op}: {dict(error)}")
        self.op = op
        self.info = dict(error)

    @property
    def error(self) -> str | None:
        value = self.info.get("error")
        return str(value) if value is not None else None


def rp_missing() -> str | None:
    if shutil.which(os.environ.get("AMI_AUTH_TEST_NODE", "node")) is None:
        return "node is not installed: relying-party tests skipped"
    if not (PEERS / "node_modules" / "openid-client").is_dir():
        return "tests/peers/node_modules missing (run `make peers`): relying-party tests skipped"
    return None


class RelyingParty:
    def __init__(self, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
        self.port = port
        self.process = process
        self.log = log
        self.url = f"http://127.0.0.1:{port}"
        self._http = httpx.Client(base_url=self.url, timeout=30, trust_env=False)

    def call(self, op: str, **args: Any) -> Any:
        response = self._http.post("/call", json={"op": op, **args})
        response.raise_for_status()
        body = response.json()
        if "error" in body:
            raise RPError(op, body["error"])
        return body.get("result")

    def redirect_uri(self, name: str) -> str:
        return f"{self.url}/cb/{name}"

    def seen(self, name: str) -> list[str]:
        result: list[str] = self._http.get(f"/seen/{name}").json()
        return result

    def backchannel_uri(self, name: str) -> str:
        return f"{self.url}/backchannel/{name}"

    def receive_logouts(self, name: str, *, issuer: str, client_id: str, status: int = 200) -> None:
        config = {"issuer": issuer, "jwks_uri": issuer + "/oauth2/jwks", "client_id": client_id, "status": status}
        self._http.post(f"/backchannel-config/{name}", json=config).raise_for_status()

    def logouts(self, name: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._http.get(f"/logouts/{name}").json()
        return result

    def wait_for_logouts(self, name: str, count: int = 1, timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.logouts(name)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        self._http.close()


@contextmanager
def running_rp(env: Mapping[str, str] | None = None) -> Iterator[RelyingParty]:
    reason = rp_missing()
    if reason is not None:
        require_peer(reason)
    node = shutil.which(os.environ.get("AMI_AUTH_TEST_NODE", "node"))
    assert node is not None
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="rp-", suffix=".log")[1])
    with log.open("wb") as out:
        process = subprocess.Popen(
            [node, str(PEERS / "rp.mjs"), str(port)],
            cwd=PEERS,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    rp = RelyingParty(port, process, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "READY" not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rp.mjs did not start:\n{rp.output()}")
            time.sleep(0.05)
        yield rp
    finally:
        rp.close()
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        log.unlink(missing_ok=True)


# --- a browser for AMI's pages ----------------------------------------------------------------------------------


@dataclass
class Page:
    url: str
    status: int
    text: str

    def form(self, action_contains: str = "") -> tuple[str, dict[str, str]]:
        """The action and hidden fields of the first form whose action contains ``action_contains``."""
        for match in re.finditer(r"<form[^>]*>.*?</form>", self.text, re.S):
            tag = match.group(0)
            action = re.search(r'action="([^"]*)"', tag)
            target = html.unescape(action.group(1)) if action else self.url
            if action_contains not in target:
                continue
            fields = {
                html.unescape(n): html.unescape(v)
                for n, v in re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', tag)
            }
            return urljoin(self.url, target), fields
        raise AssertionError(f"no form with action containing {action_contains!r} on {self.url}:\n{self.text[:2000]}")


class Browser:
    """One user's browser on the provider: a cookie jar, redirects followed by hand until they leave the site."""

    def __init__(self, base_url: str, **client: Any) -> None:
        self.base_url = base_url
        origin = urlsplit(base_url)
        self.origin = (origin.scheme, origin.netloc)
        self.http = httpx.Client(base_url=base_url, timeout=30, trust_env=False, follow_redirects=False, **client)

    def close(self) -> None:
        self.http.close()

    def _ours(self, url: str) -> bool:
        parts = urlsplit(urljoin(self.base_url, url))
        return (parts.scheme, parts.netloc) == self.origin

    def follow(self, response: httpx.Response) -> Page | str:
        """Follow redirects (and our "returning to the app" page) while on the provider. Returns the page it stops
        on, or the URL of the app it was sent to."""
        for _ in range(20):
            if response.status_code in (301, 302, 303, 307, 308):
                location = urljoin(str(response.url), response.headers["Location"])
                if not self._ours(location):
                    return location
                response = self.http.get(location)
                continue
            text = response.text
            refresh = re.search(r'http-equiv="refresh" content="0;url=([^"]+)"', text)
            if refresh:
                return html.unescape(refresh.group(1))
            return Page(str(response.url), response.status_code, text)
        raise AssertionError("too many redirects")

    def get(self, url: str, **kwargs: Any) -> Page | str:
        return self.follow(self.http.get(url, **kwargs))

    def submit(self, page: Page, action_contains: str = "", **values: str) -> Page | str:
        action, fields = page.form(action_contains)
        return self.follow(self.http.post(action, data={**fields, **values}))

    def sign_in(self, page: Page, email: str, password: str) -> Page | str:
        assert "/signin" in page.url, f"not the sign-in page: {page.url}"
        return self.submit(page, "/signin", email=email, password=password)


def page(result: Page | str) -> Page:
    assert isinstance(result, Page), f"expected a page, was sent to {result}"
    return result


def landed(result: Page | str) -> str:
    assert isinstance(result, str), (
        f"expected a redirect to the app, got {result.status} {result.url}:\n{result.text[:1500]}"
    )
    return result


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2, default=str)
