"""Verification: does a credential work? Two entry points.

* :func:`verify_account` — a connected account's values + secrets (typed into the secret dialog, or
  stored): the entry's `verify` request through ``app/net.py`` (or its `verify` hook, e.g. SMTP), with
  the outcome mapped to the taxonomy **on the field to blame** — 401 → ``invalid_credentials`` on the
  secret field(s) the request sent; 403 → ``permission_denied`` there too; 404 → ``invalid_config`` on
  the base URL; 429 → ``rate_limited`` with ``retry_after``; no response (timeout, DNS failure, refused
  connection) → ``provider_unreachable`` on the base URL; an address the SSRF guard refuses →
  ``invalid_config`` on the base URL. A field of the provider config (not of the account) is named
  ``config.<field>``. On success the `verify.keep` values and hooks' findings become ``provider_data``.
* :func:`connectivity_test` — a provider config on its own (`providers test`, `providers apply --test`),
  by the entry's verification kind: ``discovery`` (OIDC) fetches discovery and the signing keys (the same
  check as the OAuth setup page, :func:`app.oauth.setup_check.test_connection`); ``smtp`` reaches the
  server. API-key configs hold no credential and a plain OAuth 2.0 provider (GitHub) has nothing to fetch
  without a user, so they answer ``unavailable``: keys are verified per account, OAuth 2.0 when an account
  connects.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, assert_never

from app.connectors.headers import RequestAuth, render_auth
from app.connectors.smtp_login import blame, smtp_target, verify_login
from app.errors import AppError
from app.i18n import gettext as _
from app.mailer import smtp_verify
from app.net import OutboundBlocked, OutboundClient, ProviderUnreachable, Response, retry_after
from app.oauth.setup_check import test_connection
from app.providers.catalog_messages import catalog_text
from app.providers.config_test import ConnectionTest
from app.providers.entries import ProviderEntry
from app.providers.hooks import HOOKS
from app.providers.templating import pick, referenced_values_blank, references, render_template_string
from app.providers.verify_context import ValuesByScope, VerifyContext
from app.settings import Settings
from app.vault import Secret


def connectivity_test(
    settings: Settings,
    provider: ProviderEntry,
    config: Mapping[str, Any],
    secrets: Mapping[str, Secret | None],
    *,
    client: OutboundClient | None = None,
) -> ConnectionTest:
    """Check that a config (effective values + decrypted secrets, not yet necessarily saved) works.
    ``client`` (the app's outbound client) is needed for the OIDC checks."""
    kind = provider.capabilities.verify
    match kind:
        case "none":
            return ConnectionTest(
                "unavailable", _("nothing to test: %(provider)s are built in", provider=provider.display_name)
            )
        case "discovery":
            if client is None:
                return ConnectionTest("unavailable", _("the OIDC check needs the app's HTTP client"))
            return _oidc_config_test(client, provider, config, secrets)
        case "http" if provider.capabilities.oauth:
            return ConnectionTest(
                "unavailable",
                _(
                    "%(provider)s has nothing to fetch without a user: it is checked when an account connects",
                    provider=provider.display_name,
                ),
            )
        case "http":
            return ConnectionTest(
                "unavailable", _("nothing to test on the config alone (API keys are verified per connected account)")
            )
        case "smtp":
            return _smtp_config_test(settings, config)
        case _:
            assert_never(kind)


def _failed(error: AppError, fallback_field: str | None = None) -> ConnectionTest:
    """A failed config test: the error's text and hint, and the config field it names (else the fallback)."""
    blamed = next(iter(error.fields), None) or fallback_field
    return ConnectionTest(
        "failed", f"{error.text} {error.help}", error.code, blamed.removeprefix("config.") if blamed else None
    )


def _oidc_config_test(
    client: OutboundClient, provider: ProviderEntry, config: Mapping[str, Any], secrets: Mapping[str, Secret | None]
) -> ConnectionTest:
    """Discovery (uncached) and the JWKS, as on the OAuth setup page; the findings become ``learned``."""
    report = test_connection(client, provider, config, secrets)
    if report.error is not None:
        source = None
        if report.error.code in ("provider_unreachable", "invalid_config"):
            # Discovery could not be fetched or read: the field it came from (Google's is fixed).
            where = ("discovery_url", "issuer", "tenant")
            source = next((n for n in where if provider.field("config", n) is not None and config.get(n)), None)
        return _failed(report.error, source)
    learned = dict(report.findings)
    if report.notes:
        learned["notes"] = " ".join(report.notes)
    return ConnectionTest("ok", _("Discovery and the signing keys were fetched."), learned=learned)


def _smtp_config_test(settings: Settings, config: Mapping[str, Any]) -> ConnectionTest:
    """The server half of an SMTP account: connect, EHLO, STARTTLS, NOOP (logins are per account)."""
    values: ValuesByScope = {"config": config, "account": {}}
    try:
        smtp_verify(smtp_target(values, {}, settings))
    except AppError as exc:
        return _failed(blame(exc, values))
    return ConnectionTest(
        "ok", _("The server answered EHLO, TLS and NOOP; each account's login is checked separately.")
    )


# ------------------------------------------------------------------------------------ account verification

VerifyStatus = Literal["ok", "failed", "skipped"]
# Bodies bigger than this are not parsed: a verification endpoint answers with a small JSON document.
MAX_BODY: Final = 1024 * 1024
# Vendor error codes that name a non-secret field rather than the key (OpenAI answers a wrong
# OpenAI-Organization/OpenAI-Project header with 401 and these codes).
FIELD_ERROR_CODES: Final[Mapping[str, str]] = {
    "mismatched_organization": "organization_id",
    "mismatched_project": "project_id",
}
_VENDOR_CODE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,60}")
# draft-ietf-httpapi-ratelimit-headers: `RateLimit: "api";r=0;t=120` (the Hugging Face Hub sends it).
_RATELIMIT_T: Final = re.compile(r"(?:^|;)\s*t=(\d+)")


@dataclass(frozen=True)
class Verification:
    """``ok`` with what was learned (stored as ``provider_data``), ``failed`` with the taxonomy error (its
    ``fields`` name the fields to blame), or ``skipped`` when the entry has nothing to check."""

    status: VerifyStatus
    message: str
    learned: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    error: AppError | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    @classmethod
    def failed(cls, error: AppError) -> Verification:
        return cls("failed", error.text, error=error)


def _scopes(values: ValuesByScope, secrets: Mapping[str, Secret | None]) -> dict[str, Mapping[str, Any]]:
    return {"config": values.get("config", {}), "account": values.get("account", {}), "secret": secrets, "token": {}}


def field_key(scope: str, name: str) -> str:
    """How an error names a field: account fields by name, config fields as ``config.<name>``."""
    return name if scope in ("account", "secret") else f"{scope}.{name}"


def base_field(provider: ProviderEntry, endpoint: str = "base") -> str | None:
    """The field the verification base URL comes from (`${account.base_url}` → ``base_url``)."""
    template = provider.endpoints.get(endpoint, "")
    for ref in references(template):
        if ref.scope in ("account", "config"):
            return field_key(ref.scope, ref.name)
    return None


def credential_fields(provider: ProviderEntry, values: ValuesByScope) -> list[str]:
    """The secret fields the request sends (those referenced by the headers and parameters that apply)."""
    names: list[str] = []
    templates: list[str] = []
    for header in provider.headers:
        if header.when is None or header.when.matches(values):
            templates += [header.name, *(header.basic or ()), *([header.value] if header.value else [])]
    for param in provider.query:
        if param.when is None or param.when.matches(values):
            templates.append(param.value)
    for template in templates:
        for ref in references(template):
            if ref.scope == "secret" and ref.name not in names:
                names.append(ref.name)
    return names


def _label(provider: ProviderEntry, key: str) -> str:
    _scope, dot, name = key.partition(".")
    if dot:
        spec = provider.field("config", name)
        return str(_("Provider config · %(field)s", field=catalog_text(spec.label) if spec else name))
    spec = provider.field("account", key)
    return catalog_text(spec.label) if spec is not None else key


def field_labels(provider: ProviderEntry, fields: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """``(key, label, message)`` for each blamed field, for the result panel."""
    return [(key, _label(provider, key), message) for key, message in fields.items()]


def _json_body(response: Response) -> Any:
    content = response.content
    if not content or len(content) > MAX_BODY:
        return None
    try:
        return json.loads(content)
    except ValueError:
        return None


def _vendor_code(body: Any) -> str | None:
    """A short machine code from the vendor's error body (never its free text, which may quote the key)."""
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    candidates = [error.get("code"), error.get("type")] if isinstance(error, dict) else [error]
    for candidate in candidates:
        if isinstance(candidate, str) and _VENDOR_CODE.fullmatch(candidate):
            return candidate
    return None


def wait_seconds(response: Response) -> int | None:
    """How long the provider asked us to wait: Retry-After (RFC 9110 §10.2.3), else the RateLimit `t`."""
    asked = retry_after(response)
    if asked is None:
        match = _RATELIMIT_T.search(response.headers.get("RateLimit", ""))
        asked = float(match.group(1)) if match else None
    return math.ceil(asked) if asked is not None else None


def _status_error(
    provider: ProviderEntry, values: ValuesByScope, response: Response, method: str, path: str
) -> AppError:
    status = response.status_code
    body = _json_body(response)
    code = _vendor_code(body)
    said = " " + _("(%(provider)s said: %(code)s)", provider=provider.display_name, code=code) if code else ""
    credentials = credential_fields(provider, values)
    base = base_field(provider)
    name = provider.display_name
    if status == 401:
        target = FIELD_ERROR_CODES.get(code or "")
        if target is not None and provider.field("account", target) is not None:
            return AppError(
                "invalid_credentials",
                _(
                    "%(provider)s refused the request because of %(field)s%(said)s.",
                    provider=name,
                    field=_label(provider, target),
                    said=said,
                ),
                _("Check that value, or leave it blank."),
                fields={
                    target: _("%(provider)s did not accept this value for this key%(said)s.", provider=name, said=said)
                },
            )
        return AppError(
            "invalid_credentials",
            _("%(provider)s did not accept the credentials (HTTP 401)%(said)s.", provider=name, said=said),
            _("Check the value; it may have been revoked, mistyped or belong to another account."),
            fields={
                f: _("%(provider)s did not accept this value (HTTP 401)%(said)s.", provider=name, said=said)
                for f in credentials
            },
        )
    if status == 403:
        return AppError(
            "permission_denied",
            _("%(provider)s accepted the credentials but refused access (HTTP 403)%(said)s.", provider=name, said=said),
            _("Give the key the permissions this use needs, or use another key."),
            fields={
                f: _(
                    "This key may not use %(method)s %(path)s (HTTP 403)%(said)s.", method=method, path=path, said=said
                )
                for f in credentials
            },
        )
    if status == 429:
        wait = wait_seconds(response)
        after = _("Try again in %(wait)s seconds.", wait=wait) if wait is not None else _("Try again later.")
        return AppError(
            "rate_limited",
            _("%(provider)s is rate limiting these credentials (HTTP 429)%(said)s.", provider=name, said=said),
            _("The value was not checked.") + " " + after,
            retry_after=wait,
        )
    if status in (404, 405, 410):
        answered = _(
            "%(provider)s answered %(status)s for %(method)s %(path)s: is this the right URL?",
            provider=name,
            status=status,
            method=method,
            path=path,
        )
        fields = {base: answered} if base else {}
        return AppError(
            "invalid_config",
            _(
                "%(provider)s has no %(method)s %(path)s at this address (HTTP %(status)s).",
                provider=name,
                method=method,
                path=path,
                status=status,
            ),
            _("Check the base URL: it should be the API's root, without a path."),
            fields=fields,
        )
    if status >= 500:
        return AppError(
            "provider_unreachable",
            _(
                "%(provider)s answered with a server error (HTTP %(status)s)%(said)s.",
                provider=name,
                status=status,
                said=said,
            ),
            _("The provider has a problem; try again later."),
        )
    return AppError(
        "invalid_config",
        _(
            "%(provider)s answered %(method)s %(path)s with an unexpected HTTP %(status)s%(said)s.",
            provider=name,
            method=method,
            path=path,
            status=status,
            said=said,
        ),
        _("Check the account's settings against the provider's documentation."),
    )


def _unreachable(provider: ProviderEntry, exc: AppError) -> AppError:
    base = base_field(provider)
    if isinstance(exc, OutboundBlocked):
        message = f"{exc.text}."
        return AppError("invalid_config", message, exc.help, fields={base: message} if base else {})
    if isinstance(exc, ProviderUnreachable):
        message = f"{exc.text}."
        return AppError(
            "provider_unreachable",
            message,
            _("Check the address and that this server may connect to it, then try again."),
            fields={base: message} if base else {},
        )
    return AppError("invalid_config", exc.text, exc.help, fields={base: exc.text} if base else {})


def _http_verify(
    client: OutboundClient,
    settings: Settings,
    provider: ProviderEntry,
    values: ValuesByScope,
    secrets: Mapping[str, Secret | None],
) -> Verification:
    spec = provider.verify
    assert spec is not None
    scopes = _scopes(values, secrets)
    if spec.skip_if_empty and referenced_values_blank(spec.path, **scopes):
        return Verification("skipped", _("No verification request is configured, so the value was saved untested."))
    try:
        auth: RequestAuth = render_auth(provider, values, secrets)
    except AppError as exc:
        return Verification.failed(exc)
    base = render_template_string(provider.endpoints[spec.base], **scopes).rstrip("/")
    path = render_template_string(spec.path, **scopes)
    where = base_field(provider, spec.base)
    if not base:
        fields = {where: _("Set the base URL.")} if where else {}
        return Verification.failed(
            AppError("invalid_config", _("There is no base URL to verify against."), fields=fields)
        )
    try:
        response = client.request(spec.method, base + path, headers=auth.headers, params=auth.query or None)
    except AppError as exc:
        return Verification.failed(_unreachable(provider, exc))
    # app.net reads the whole (small) body, so nothing is left open here.
    if response.status_code not in spec.expect_status:
        return Verification.failed(_status_error(provider, values, response, spec.method, path))
    body = _json_body(response)
    headers = {k.lower(): v for k, v in response.headers.items()}
    kept = {target: pick(body, source) for source, target in spec.keep.items()}
    learned: dict[str, Any] = {k: v for k, v in kept.items() if v is not None}
    context = VerifyContext(values, secrets, settings, json=body, headers=headers, kept=learned)
    try:
        for name in provider.hooks:
            hook = HOOKS[name].after_verify
            if hook is not None:
                learned = hook(provider, dataclasses.replace(context, kept=learned))
    except AppError as exc:
        return Verification.failed(exc)
    accepted = _(
        "%(provider)s accepted the credentials (%(method)s %(path)s).",
        provider=provider.display_name,
        method=spec.method,
        path=path,
    )
    return Verification("ok", accepted, learned)


def verify_account(
    client: OutboundClient,
    settings: Settings,
    provider: ProviderEntry,
    values: ValuesByScope,
    secrets: Mapping[str, Secret | None],
    *,
    send_test_to: str | None = None,
    before_send: Callable[[], None] | None = None,
) -> Verification:
    """Check an account's credentials against the provider (nothing is stored here). ``send_test_to`` and
    ``before_send`` are for SMTP: a test mail after the login, and the send-cap check before it."""
    kind = provider.capabilities.verify
    match kind:
        case "none":
            return Verification("skipped", _("%(provider)s has no verification step.", provider=provider.display_name))
        case "http":
            return _http_verify(client, settings, provider, values, secrets)
        case "smtp":
            context = VerifyContext(values, secrets, settings, send_test_to=send_test_to, before_send=before_send)
            try:
                accepted = _("%(provider)s accepted the credentials.", provider=provider.display_name)
                return Verification("ok", accepted, verify_login(context))
            except AppError as exc:
                return Verification.failed(exc)
        case "discovery":
            # An OAuth account is checked when it connects (its tokens, its ID token), not by a stored secret.
            return Verification(
                "skipped", _("%(provider)s accounts cannot be verified yet.", provider=provider.display_name)
            )
        case _:
            assert_never(kind)
