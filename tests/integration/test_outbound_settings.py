"""Every setting that makes the app connect out goes through the outbound guard.

The table is built, not typed: every catalog field of type ``url`` or ``host`` (OIDC issuers, discovery and
endpoint URLs, GitHub's and Microsoft's API roots, API-key base URLs, the SMTP server host), and every
``AMI_AUTH_*_URL`` setting that names a server the app calls (``AMI_AUTH_SMTP_URL``,
``AMI_AUTH_PWNED_RANGE_URL``). A new provider's address fields become rows by themselves; a new ``*_URL``
setting fails here until it is given a driver (or an explained exclusion).

Each row points its one setting at 127.0.0.2 — loopback, so the guard refuses it: tests allow only
127.0.0.1 — where a listener counts connections, and points every other address field at 127.0.0.1 where
nothing listens. Then it runs everything the app does with such a setting: the connection test, account
verification, discovery, the code exchange, userinfo and provider API hooks, refresh, revocation, the device
flow, the JWKS fetch, a mail, the breached-password check. The row passes when the guard refused 127.0.0.2
(so some operation really used the setting) and the listener saw no connection.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy.orm import Session

from app.auth.passwords import breach_count
from app.connectors.verify import connectivity_test, verify_account
from app.errors import AppError
from app.mailer import Mailer
from app.net import OutboundClient, Upstream, get_client
from app.oauth import ProviderMetadata, TokenSet, discover, exchange_code, fetch_jwks, refresh
from app.oauth.device import start_device_authorization
from app.oauth.identity import fetch_identity
from app.oauth.provider import OAuthProvider, provider_from_values, revoke_tokens
from app.providers.entries import FieldSpec, ProviderEntry
from app.providers.registry import get_catalog
from app.providers.templating import references, render_template_string
from app.providers.types import FIELD_SETS, FieldType, Which
from app.providers.validation import effective_values
from app.settings import Settings, with_overrides
from app.vault import Secret
from tests.conftest import make_settings
from tests.support.listeners import Listener, listening
from tests.support.live import free_port

REFUSED = "127.0.0.2"  # loopback, outside the tests' AMI_AUTH_OUTBOUND_ALLOW (127.0.0.1)
DEAD = "127.0.0.1"  # allowed; nothing listens on the port used
ADDRESS_TYPES = (FieldType.URL, FieldType.HOST)
# AMI_AUTH_*_URL settings that are not outbound targets of the guard, and why.
NOT_OUTBOUND = {
    "base_url": "the app's own public address: links in mails and pages, never connected to",
    "database_url": "the operator's database (a driver connection, not a provider the app is told about)",
    "redis_url": "the operator's Redis (likewise)",
}


@dataclass(frozen=True)
class Row:
    """One setting the app connects out with: a catalog field, or an AMI_AUTH_* setting."""

    name: str
    entry: ProviderEntry | None = None
    spec: FieldSpec | None = None
    setting: str | None = None


def browser_only(entry: ProviderEntry, spec: FieldSpec) -> bool:
    """A field only the authorization endpoint uses: the user's browser is sent there (RFC 6749 §3.1), the
    app never connects to it."""
    users = {
        role
        for role, template in entry.endpoints.items()
        if any(ref.scope == spec.which and ref.name == spec.name for ref in references(template))
    }
    return users == {"authorization"}


def _rows() -> list[Row]:
    rows = [
        Row(f"{entry.id} {which}.{spec.name}", entry=entry, spec=spec)
        for entry in get_catalog()
        for which in FIELD_SETS
        for spec in entry.fields(which)
        if spec.type in ADDRESS_TYPES and not browser_only(entry, spec)
    ]
    urls = [f.name for f in dataclasses.fields(Settings) if f.name.endswith("_url") and f.name not in NOT_OUTBOUND]
    return rows + [Row(f"AMI_AUTH_{name.upper()}", setting=name) for name in urls]


ROWS = _rows()


def test_the_table_covers_every_kind_of_outbound_setting() -> None:
    # Not a list of providers: each way of connecting out must have found rows in the catalog.
    modes = {row.entry.auth_mode.value for row in ROWS if row.entry is not None}
    assert {"oidc", "oauth2", "api_key", "smtp"} <= modes
    assert {row.setting for row in ROWS if row.setting} >= {"smtp_url", "pwned_range_url"}


# --- values: the row's setting at the refused address, every other address dead -------------------------


def _address(spec: FieldSpec, host: str, port: int) -> Any:
    if spec.type == FieldType.HOST:
        return host
    base = f"http://{host}:{port}"
    for candidate in (base, f"{base}/.well-known/openid-configuration"):
        if spec.pattern is None or re.fullmatch(spec.pattern, candidate):
            return candidate
    raise AssertionError(f"no test URL matches the pattern of {spec.name}")


def _filler(spec: FieldSpec) -> Any:
    if spec.default is not None:
        return spec.default
    if spec.example is not None:
        return spec.example
    if spec.type == FieldType.ENUM:
        return spec.enum[0].value
    if spec.type == FieldType.INTEGER:
        return spec.min or 1
    if spec.type == FieldType.BOOLEAN:
        return False
    if spec.type == FieldType.STRING_LIST:
        return ["x"]
    return "x"


def _values(
    row: Row, trap: Listener, *, others_blank: bool
) -> tuple[dict[Which, dict[str, Any]], dict[str, Secret | None]]:
    """The row's field at the refused address; every other address field dead — or, with ``others_blank``,
    left blank when optional (an issuer is only used for discovery while no discovery URL is set)."""
    assert row.entry is not None and row.spec is not None
    values: dict[Which, dict[str, Any]] = {}
    secrets: dict[str, Secret | None] = {}
    for which in FIELD_SETS:
        values[which] = {}
        for spec in row.entry.fields(which):
            if spec.secret:
                secrets[spec.name] = Secret("s3cret-for-the-outbound-test")
            elif spec.type in ADDRESS_TYPES:
                if spec.required or not others_blank:
                    values[which][spec.name] = _address(spec, DEAD, trap.port)
            else:
                values[which][spec.name] = _filler(spec)
    values[row.spec.which][row.spec.name] = _address(row.spec, REFUSED, trap.port)
    # The port belongs to the address (SMTP): the refused host's listener, or a dead port on 127.0.0.1.
    for which in FIELD_SETS:
        if "port" in values[which]:
            values[which]["port"] = trap.port
    # Show the row's field: set what its visible_when asks for (token_url needs endpoint_source: manual).
    if row.spec.visible_when is not None:
        for term in row.spec.visible_when.terms:
            values[term.scope][term.field] = term.raw[0]
    return values, secrets


# --- drivers: everything the app does with an address ---------------------------------------------------

Outcome = list[str]  # what each operation answered (error texts and field messages)


def _errors(error: AppError | None) -> Outcome:
    return [] if error is None else [error.text, *error.fields.values()]


def _attempt(outcome: Outcome, call: Callable[[], object]) -> object:
    try:
        return call()
    except AppError as exc:
        outcome.extend(_errors(exc))
        return None


def _discovered(*, optional: bool) -> Callable[[str, str | None], ProviderMetadata]:
    """Discovery's answer for rows that test another field: endpoints at the dead address (the optional
    ones left out unless ``optional``, so e.g. Microsoft Graph is asked when there is no userinfo)."""

    def metadata(issuer: str, _discovery_url: str | None) -> ProviderMetadata:
        dead = f"http://{DEAD}:{free_port()}"
        return ProviderMetadata(
            issuer=issuer,
            authorization_endpoint=f"{dead}/authorize",
            token_endpoint=f"{dead}/token",
            jwks_uri=f"{dead}/jwks",
            userinfo_endpoint=f"{dead}/userinfo" if optional else None,
            revocation_endpoint=f"{dead}/revoke" if optional else None,
            device_authorization_endpoint=f"{dead}/device" if optional else None,
        )

    return metadata


def _oauth(
    client: OutboundClient,
    row: Row,
    config: Mapping[str, Any],
    secrets: Mapping[str, Secret | None],
    *,
    optional: bool,
) -> Outcome:
    assert row.entry is not None
    outcome: Outcome = []
    # Discovery as sign-in and "Test connection" do it (through the client)…
    _attempt(
        outcome,
        lambda: provider_from_values(
            row.entry,  # type: ignore[arg-type]
            1,
            "Outbound test",
            config,
            secrets,
            discover_with=lambda issuer, url: discover(client, issuer, discovery_url=url),
            keys=None,
        ),
    )
    # …and every other endpoint, with discovery answered so the flow gets that far.
    built = _attempt(
        outcome,
        lambda: provider_from_values(
            row.entry,  # type: ignore[arg-type]
            1,
            "Outbound test",
            config,
            secrets,
            discover_with=_discovered(optional=optional),
            keys=None,
        ),
    )
    if not isinstance(built, OAuthProvider):
        return outcome
    provider = built
    tokens = TokenSet(access_token="at", refresh_token="rt", scopes=provider.scopes)
    _attempt(
        outcome,
        lambda: exchange_code(client, provider.metadata, provider.credentials, code="c", redirect_uri="http://a/cb"),
    )
    _attempt(outcome, lambda: fetch_identity(client, provider, tokens))
    _attempt(outcome, lambda: refresh(client, provider.metadata, provider.credentials, tokens))
    _attempt(outcome, lambda: revoke_tokens(client, provider, tokens))
    if provider.metadata.device_authorization_endpoint:
        _attempt(
            outcome,
            lambda: start_device_authorization(client, provider.metadata, provider.credentials, provider.scopes),
        )
    jwks_uri = provider.metadata.jwks_uri
    if jwks_uri:
        _attempt(outcome, lambda: fetch_jwks(client, jwks_uri))
    return outcome


def _catalog_row(app: Flask, row: Row, trap: Listener) -> Outcome:
    assert row.entry is not None
    settings: Settings = app.extensions["ami_settings"]
    client = get_client(app)
    outcome: Outcome = []
    for others_blank in (False, True):
        values, secrets = _values(row, trap, others_blank=others_blank)
        test = connectivity_test(settings, row.entry, values["config"], secrets, client=client)
        outcome += [test.message]
        if row.entry.oauth is None:  # accounts with their own credential (API key, SMTP login)
            outcome += _errors(verify_account(client, settings, row.entry, values, secrets).error)
        else:
            outcome += _oauth(client, row, values["config"], secrets, optional=not others_blank)
        outcome += _proxied(client, row, values)
    return outcome


def _proxied(client: OutboundClient, row: Row, values: dict[Which, dict[str, Any]]) -> Outcome:
    """The credential-injecting proxy's upstream call (app/api/proxy_api.py), to the entry's proxy base."""
    assert row.entry is not None
    spec = row.entry.proxy
    outcome: Outcome = []
    if spec is None:
        return outcome
    scopes = {which: effective_values(row.entry, which, values[which]) for which in FIELD_SETS}
    base = render_template_string(row.entry.endpoints[spec.base], **scopes).rstrip("/")
    if base:
        opened = _attempt(
            outcome,
            lambda: client.open_stream(
                "GET", f"{base}/v1/x", headers=[], params={}, content=None, read_timeout=1, pool_timeout=1
            ),
        )
        if isinstance(opened, Upstream):
            opened.close()
    return outcome


def _setting_row(app: Flask, db: Session, row: Row, trap: Listener) -> Outcome:
    settings: Settings = app.extensions["ami_settings"]
    outcome: Outcome = []
    if row.setting == "smtp_url":
        configured = with_overrides(settings, smtp_url=f"smtp+starttls://u:p@{REFUSED}:{trap.port}")
        _attempt(outcome, lambda: Mailer(db, configured).send("to@example.com", "Outbound test", "x\n"))
    elif row.setting == "pwned_range_url":
        configured = with_overrides(settings, pwned_range_url=f"http://{REFUSED}:{trap.port}/range")
        assert breach_count(configured, "correct horse battery staple", client=get_client(app)) is None
    else:
        raise AssertionError(f"AMI_AUTH_{row.setting!s} has no driver here: add one, or list it in NOT_OUTBOUND")
    return outcome


# --- the test ----------------------------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path, sqlite_url: str) -> Settings:
    return make_settings(tmp_path, sqlite_url, AMI_AUTH_OUTBOUND_TIMEOUT="0.5", AMI_AUTH_OUTBOUND_RETRIES="0")


@pytest.fixture(scope="module")
def trap() -> Iterator[Listener]:
    """A listener on the refused address: any connection it accepts is a hole in the guard."""
    with listening(REFUSED) as listener:
        yield listener


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_the_setting_goes_through_the_outbound_guard(
    row: Row, app: Flask, db: Session, trap: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    before = trap.accepted
    with app.app_context():
        outcome = _catalog_row(app, row, trap) if row.entry is not None else _setting_row(app, db, row, trap)
    refusal = f"Outbound address not allowed: {REFUSED} (loopback)"
    # HTTP answers with the refusal; SMTP answers its one "no SMTP server" and logs the refusal.
    seen = [*outcome, caplog.text]
    assert any(refusal in text for text in seen), f"no operation refused {row.name} at {REFUSED}: {outcome}"
    assert trap.accepted == before
