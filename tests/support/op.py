"""The real OpenID Provider (node ``oidc-provider``, tests/peers/op.mjs) as a test peer.

``running_op(...)`` starts ``node op.mjs`` on a free 127.0.0.1 port and stops it by PID;
``op_login(...)`` and ``op_device_login(...)`` drive the provider's own login, consent and device pages
over HTTP with one cookie jar per simulated user (:class:`OPBrowser`), as TESTING.md §1 describes.
Without ``node`` or ``tests/peers/node_modules`` the tests that need it are skipped (or fail in CI) via
``require_peer``. Run ``make peers`` (``npm ci`` in tests/peers) to install it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urljoin, urlsplit

import httpx

from app.oauth import ClientCredentials
from app.oauth.tokens import AuthMethod
from tests.conftest import require_peer
from tests.support.live import free_port

PEERS = Path(__file__).resolve().parent.parent / "peers"
OP_SCRIPT = PEERS / "op.mjs"
START_TIMEOUT = 20.0
# A redirect URI nobody listens on: the drivers stop at the redirect and hand its URL to the test.
DEFAULT_REDIRECT_URI = "http://127.0.0.1:5999/oauth/callback"


class OPError(AssertionError):
    """The provider's pages did not go the way the driver expected (shows status and a page excerpt)."""


@dataclass(frozen=True)
class OPClient:
    """A client registered at the test OP."""

    client_id: str
    client_secret: str = field(repr=False)
    redirect_uri: str = DEFAULT_REDIRECT_URI
    auth_method: AuthMethod = "client_secret_basic"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def credentials(self) -> ClientCredentials:
        return ClientCredentials(self.client_id, self.client_secret, self.auth_method)

    def registration(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "redirect_uris": [self.redirect_uri],
            "token_endpoint_auth_method": self.auth_method,
            **self.extra,
        }


# The default client's secret holds characters that RFC 6749 §2.3.1 form-encoding must protect.
DEFAULT_CLIENTS = (
    OPClient("ami-auth", "s3cret:with+special%chars/=&"),
    OPClient("ami-other", "other-secret", auth_method="client_secret_post"),
)


def node_missing() -> str | None:
    """Why the OP cannot run here, or ``None``."""
    if shutil.which(os.environ.get("AMI_AUTH_TEST_NODE", "node")) is None:
        return "node is not installed: OpenID Provider tests skipped"
    if not (PEERS / "node_modules" / "oidc-provider").is_dir():
        return "tests/peers/node_modules missing (run `make peers`): OpenID Provider tests skipped"
    return None


class OpenIDProvider:
    """One ``node op.mjs`` process; ``issuer`` is ``http://127.0.0.1:PORT`` exactly."""

    def __init__(self, clients: Sequence[OPClient], port: int, options: Mapping[str, Any]) -> None:
        self.clients = {c.client_id: c for c in clients}
        self.port = port
        self.options = dict(options)
        self.issuer = f"http://127.0.0.1:{port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="op-", suffix=".log", delete=False)  # noqa: SIM115
        self._http = httpx.Client(base_url=self.issuer, timeout=10, trust_env=False)

    @property
    def client(self) -> OPClient:
        """The first (default) client."""
        return next(iter(self.clients.values()))

    @property
    def discovery_url(self) -> str:
        return self.issuer + "/.well-known/openid-configuration"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def config(self) -> dict[str, Any]:
        return {"port": self.port, "clients": [c.registration() for c in self.clients.values()], **self.options}

    def start(self) -> None:
        assert self._process is None, "already running"
        node = shutil.which(os.environ.get("AMI_AUTH_TEST_NODE", "node"))
        assert node is not None
        self._process = subprocess.Popen(
            [node, str(OP_SCRIPT), json.dumps(self.config())],
            cwd=PEERS,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise RuntimeError(f"op.mjs exited with {code} on start:\n{self.log_text()}")
            try:
                if self._http.get("/.well-known/openid-configuration").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"op.mjs did not answer within {START_TIMEOUT}s:\n{self.log_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()  # this PID only
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def held(self) -> PausedProvider:
        """The provider paused (``SIGSTOP``) until released, with :class:`tests.support.hold.Hold`'s
        ``next``/``wait_held``/``release``: a request sent to it meanwhile waits unanswered."""
        assert self._process is not None, "not running"
        return PausedProvider(self._process.pid, self.port)

    def restart(self) -> None:
        """Stop and start on the same port: new signing key (new kid), all OP state forgotten."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        self._http.close()
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)

    def log_text(self) -> str:
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")[-4000:]

    # --- test-only endpoints (see op.mjs) ---

    def counts(self) -> dict[str, Any]:
        """``{"requests": {"GET /jwks": n}, "grants": {"refresh_token": {"200": n, "400": m}}}``."""
        data: dict[str, Any] = self._http.get("/__test/counts").json()
        return data

    def request_count(self, method: str, path: str) -> int:
        return int(self.counts()["requests"].get(f"{method} {path}", 0))

    def grant_count(self, grant_type: str, status: int = 200) -> int:
        return int(self.counts()["grants"].get(grant_type, {}).get(str(status), 0))

    def last_authorize(self) -> dict[str, str] | None:
        """The query of the last authorization request the provider received (``None`` since a reset)."""
        query: dict[str, str] | None = self.counts()["authorize"]
        return query

    def reset_counts(self) -> None:
        self._http.post("/__test/reset").raise_for_status()

    def set_claims(self, login: str, claims: dict[str, Any]) -> None:
        """Replace an account's claims (a change in the directory), seen by its next sign-in."""
        self._http.post("/__test/accounts", json={login: claims}).raise_for_status()

    def mint_refresh_tokens(
        self, count: int, *, account_id: str = "alice", client_id: str | None = None, scope: str | None = None
    ) -> list[str]:
        """Real refresh tokens issued through the provider's own models (bulk fixtures, no login)."""
        response = self._http.post(
            "/__test/refresh-tokens",
            json={
                "client_id": client_id or self.client.client_id,
                "account_id": account_id,
                "scope": scope or "openid offline_access",
                "count": count,
            },
        )
        response.raise_for_status()
        tokens: list[str] = response.json()["refresh_tokens"]
        return tokens


class PausedProvider:
    """See :meth:`OpenIDProvider.held`: ``wait_held`` returns once a request's bytes wait unread on one of the
    provider's connections (the kernel's receive queue, ``/proc/net/tcp``)."""

    def __init__(self, pid: int, port: int) -> None:
        self.pid, self.port = pid, port

    def next(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def wait_held(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self._unread() == 0:
            if time.monotonic() > deadline:
                raise AssertionError("no request reached the paused provider")
            time.sleep(0.01)

    def release(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def _unread(self) -> int:
        unread = 0
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == self.port and fields[3] == "01":  # ESTABLISHED, to the provider
                unread += int(fields[4].split(":")[1], 16)  # rx_queue
        return unread


@contextmanager
def running_op(
    clients: Sequence[OPClient] = DEFAULT_CLIENTS, *, port: int | None = None, **options: Any
) -> Iterator[OpenIDProvider]:
    """Run an OP for the ``with`` block. ``options`` are op.mjs config keys (``ttl``, ``signing``,
    ``rotateRefreshToken``, ``accounts``, ``claims``, ``deviceInterval``, ``deviceSlowDown``,
    ``omitUnchangedRefreshToken``, ``userinfoSub``, ``pkceRequired``)."""
    reason = node_missing()
    if reason is not None:
        require_peer(reason)
    provider = OpenIDProvider(clients, port or free_port(), options)
    try:
        provider.start()
        yield provider
    finally:
        provider.close()


# --- the browserless user -----------------------------------------------------------------------------


@dataclass
class _Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[_Form] = []
        self.links: list[str] = []
        self._in_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(_Form(a.get("action", ""), a.get("method", "get").lower()))
            self._in_form = True
        elif tag == "input" and self._in_form and a.get("name"):
            self.forms[-1].fields[a["name"]] = a.get("value", "")
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


class OPBrowser:
    """One simulated user agent: a cookie jar (the OP's cookies are path-scoped) and no auto-redirects."""

    def __init__(self) -> None:
        self.http = httpx.Client(timeout=10, trust_env=False, follow_redirects=False)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def drive(self, url: str, login: str, password: str, *, approve: bool = True) -> httpx.Response | str:
        """Follow the OP's pages from ``url``: sign in, consent (or abort), confirm a device code.

        Returns the first redirect that leaves the OP (a ``str``: the client's callback URL), or the
        last page when the OP ends on one (the device flow's "success" page).
        """
        op_origin = _origin(url)
        response = self.http.get(url)
        aborted = False
        for _ in range(25):
            if response.is_redirect:
                target = urljoin(str(response.url), response.headers["location"])
                if _origin(target) != op_origin:
                    return target
                response = self.http.get(target)
                continue
            if response.status_code != 200:
                raise OPError(f"OP answered {response.status_code} at {response.url}: {response.text[-600:]}")
            page = _PageParser()
            page.feed(response.text)
            forms = [f for f in page.forms if f.method == "post"]
            if not forms or aborted:
                return response
            form = forms[0]
            data = dict(form.fields)
            prompt = data.get("prompt")
            if prompt == "login":
                data.update(login=login, password=password)
            elif prompt == "consent" and not approve:
                abort = next(link for link in page.links if link.endswith("/abort"))
                response = self.http.get(urljoin(str(response.url), abort))
                aborted = True
                continue
            elif "confirm" in data and not approve:
                del data["confirm"]
                data["abort"] = "yes"
                aborted = True
            response = self.http.post(urljoin(str(response.url), form.action), data=data)
        raise OPError(f"too many steps at the OP, last at {response.url}")


def op_login(
    authorize_url: str,
    login: str = "alice",
    password: str = "any",
    *,
    approve: bool = True,
    browser: OPBrowser | None = None,
) -> str:
    """Sign in at the OP and consent (or refuse, ``approve=False``); return the callback URL it redirects to.

    A fresh cookie jar unless ``browser`` is given (a user who already has a session at the OP).
    """
    with _browser(browser) as agent:
        result = agent.drive(authorize_url, login, password, approve=approve)
    if not isinstance(result, str):
        raise OPError(f"the OP did not redirect back to the client; last page: {result.text[-600:]}")
    return result


def op_device_login(
    verification_uri_complete: str,
    login: str = "alice",
    password: str = "any",
    *,
    approve: bool = True,
    browser: OPBrowser | None = None,
) -> str:
    """Confirm a device code at the OP, sign in and consent; return the text of the page it ends on."""
    with _browser(browser) as agent:
        result = agent.drive(verification_uri_complete, login, password, approve=approve)
    if isinstance(result, str):
        raise OPError(f"the device flow left the OP for {result}")
    return result.text


@contextmanager
def _browser(browser: OPBrowser | None) -> Iterator[OPBrowser]:
    if browser is not None:
        yield browser
        return
    with OPBrowser() as fresh:
        yield fresh
