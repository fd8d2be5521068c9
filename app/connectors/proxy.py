"""The credential-injecting proxy's rules: which request may go where, with what, and what comes back.

``/api/account-manager/accounts/<id>/proxy/<path>`` (the face is ``app.api.proxy_api``) sends a caller's
request to the account's base URL with the credential added, so the caller never holds it. This module
decides everything about that request except moving its bytes:

* **Where.** The upstream is the catalog entry's ``proxy.base`` endpoint rendered for the account (its
  configured base URL) plus the caller's path, and nothing else: the path must be a clean absolute path
  (no ``..``/``.`` segments, no ``//``, no backslash, no encoded ``/``, ``\\`` or ``.``) so it cannot
  climb out of the base or name another host, and the (method, path) pair must be one the entry's
  ``proxy.allow`` rules list (403 otherwise; 405 with the methods allowed when only the method is wrong).
* **With what.** API keys: the entry's header templates and query parameters, as the headers endpoint
  renders them (cached). OAuth: ``Authorization: Bearer <access token>`` (or the entry's own header
  templates with ``${token.access_token}``), refreshed first when due (:mod:`app.connectors.bearer`).
* **The caller's headers.** Hop-by-hop headers (RFC 9110 §7.6.1, and any the ``Connection`` header
  names), ``Host``, every credential header (``Authorization``, ``Cookie``, ``Proxy-Authorization``,
  the names the entry injects, AMI Auth's CSRF header) and forwarding headers (``Forwarded``,
  ``X-Forwarded-*``, ``X-Real-IP``: the upstream learns nothing about the caller's network) are dropped.
* **What comes back.** Hop-by-hop headers and ``Set-Cookie`` (a vendor's cookie has no business on AMI
  Auth's origin) are dropped. ``Retry-After`` and rate-limit headers pass through and are recorded in the
  account's ``provider_data.upstream_limits`` (on a 429 or a ``Retry-After`` at once, otherwise at most
  once a minute per account and process, so a busy account is not a row write per call).
* **A 401.** API keys: the account is marked ``failing`` with ``invalid_credentials``, as a failed
  verification marks it. OAuth: see :func:`app.connectors.bearer.note_unauthorized`.
* **The account row** (API keys) is kept per process for :data:`ACCOUNT_CACHE_SECONDS` (:func:`proxied_account`),
  so a busy account is not a database round trip per call (when it is due, one thread reads it again while the
  others use the copy: :class:`app.kept.Kept`). Any change to an account or a provider config made through the
  ORM in this process (a replaced key, a new status, a deletion, a disabled config, a bulk UPDATE or DELETE of
  either table) drops every kept row at once, again when its transaction commits; a change made by another
  process is seen within :data:`ACCOUNT_CACHE_SECONDS` (twice that while a re-read is under way). OAuth accounts
  are read on every call (their refresh writes the row).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote

from sqlalchemy import Engine, event, update
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

from app import audit
from app.connectors.bearer import OAUTH_MODES, current_token, database_key, note_unauthorized
from app.connectors.headers import RequestAuth, account_values, proxy_auth, render_auth
from app.errors import AppError
from app.kept import Kept, session_engine
from app.models import ConnectedAccount, ProviderConfig, utcnow
from app.models.base import ID_MAX
from app.oauth.runtime import OAuthRuntime
from app.providers.entries import ProviderEntry, ProxySpec
from app.providers.registry import entry as catalog_entry
from app.providers.templating import render_template_string
from app.providers.types import AuthMode
from app.vault import Cipher

__all__ = [
    "HOP_BY_HOP",
    "Target",
    "caller_headers",
    "clean_path",
    "note_response",
    "prepare",
    "proxied_account",
    "response_headers",
]

# RFC 9110 §7.6.1 (and RFC 9112 §7.1 for Transfer-Encoding); proxy-connection is the old non-standard one.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_CALLER_DROPPED: Final = HOP_BY_HOP | {
    "host",
    "authorization",
    "cookie",
    "x-csrftoken",
    "x-csrf-token",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-real-ip",
    "x-request-id",
    "origin",
    "referer",
}
_UPSTREAM_DROPPED: Final = HOP_BY_HOP | {"set-cookie", "set-cookie2", "alt-svc"}
_LIMIT_HEADER: Final = re.compile(r"^(retry-after|x-ratelimit-.*|x-rate-limit-.*|ratelimit(-.*)?|[a-z]+-ratelimit-.*)$")
LIMITS_KEY: Final = "upstream_limits"
VIA: Final = "1.1 ami-auth"
LIMITS_EVERY: Final = 60.0
PATH_MAX: Final = 2048
_ENCODED_SEPARATOR: Final = re.compile(r"%(2f|5c|2e)", re.IGNORECASE)

# (database, account id) → when this process last wrote the account's upstream limits.
_limits_written: dict[tuple[str, int], float] = {}
_limits_lock = threading.Lock()


@dataclass(frozen=True)
class Target:
    """Where a proxied request goes and what it carries (``headers`` include the credential: never log them)."""

    account_id: int
    provider_type: str
    auth_mode: AuthMode
    url: str
    headers: list[tuple[str, str]] = field(repr=False)
    query: Mapping[str, str] = field(repr=False)
    bearer: str | None = field(default=None, repr=False)


def clean_path(path: str) -> str:
    """``path`` as an absolute path under the base, or ``validation_failed`` on ``path``."""
    if not path.startswith("/"):
        path = "/" + path
    problem = None
    if len(path) > PATH_MAX:
        problem = f"Use at most {PATH_MAX} characters."
    elif "\\" in path or _ENCODED_SEPARATOR.search(path) or "//" in path:
        problem = "Use a plain path: no '//', backslash or encoded '/', '\\' or '.'."
    elif any(segment in (".", "..") for segment in unquote(path).split("/")):
        problem = "Use a path without '.' or '..' segments."
    elif any(ord(c) < 0x21 or ord(c) == 0x7F for c in path):
        problem = "Use a path without spaces or control characters."
    if problem is not None:
        raise AppError("validation_failed", "The path cannot be proxied.", problem, fields={"path": problem})
    return path


def _check_allowed(provider: ProviderEntry, spec: ProxySpec, method: str, path: str) -> None:
    if spec.allows(method, path):
        return
    methods = spec.methods_for(path)
    if methods:
        raise AppError(
            "method_not_allowed",
            f"{provider.display_name} accounts allow {', '.join(methods)} on {path} through the proxy, not {method}.",
            f"Use {' or '.join(methods)}.",
        )
    patterns = sorted({p for rule in spec.allow for p in rule.patterns})
    raise AppError(
        "permission_denied",
        f"The proxy does not forward {method} {path} for {provider.display_name} accounts.",
        f"Allowed paths: {', '.join(patterns)}.",
        fields={"path": "Not a path the provider type allows through the proxy."},
    )


def _base_url(provider: ProviderEntry, spec: ProxySpec, account: ConnectedAccount) -> str:
    values = account_values(provider, account)
    base = render_template_string(provider.endpoints[spec.base], **values).strip().rstrip("/")
    if not base:
        raise AppError(
            "invalid_config",
            f"The provider config “{account.provider_config.name}” has no API base URL for the proxy.",
            "An admin sets it under Providers (advanced settings).",
        )
    return base


def _filtered(headers: Iterable[tuple[str, str]], dropped: frozenset[str]) -> list[tuple[str, str]]:
    pairs = list(headers)
    named = {
        token.strip().lower() for name, value in pairs if name.lower() == "connection" for token in value.split(",")
    }
    return [(name, value) for name, value in pairs if name.lower() not in dropped and name.lower() not in named]


def caller_headers(headers: Iterable[tuple[str, str]], injected: Iterable[str]) -> list[tuple[str, str]]:
    """The caller's headers that may go upstream (see the module docstring)."""
    return _filtered(headers, _CALLER_DROPPED | {name.lower() for name in injected})


def response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The upstream's headers that go back to the caller."""
    return _filtered(headers, _UPSTREAM_DROPPED)


def find_account(db: Session, account_id: int) -> tuple[ConnectedAccount, ProviderEntry]:
    """An API-key or OAuth account and its catalog entry; ``not_found`` for anything else (SMTP, missing)."""
    account = db.get(ConnectedAccount, account_id) if 0 < account_id <= ID_MAX else None
    provider = catalog_entry(account.provider_config.provider_type) if account is not None else None
    if account is None or provider is None or provider.auth_mode not in (AuthMode.API_KEY, *OAUTH_MODES):
        raise AppError("not_found", "There is no such connected account.", "List accounts for ids.")
    return account, provider


ACCOUNT_CACHE_SECONDS: Final = 1.0
_ACCOUNT_CACHE_MAX: Final = 10_000
_WATCHED: Final = (ConnectedAccount, ProviderConfig)
# (engine, account id) -> the detached account with its config loaded, and its catalog entry
_Account = tuple[ConnectedAccount, ProviderEntry]
_kept: Kept[tuple[Engine, int], _Account] = Kept(ACCOUNT_CACHE_SECONDS, _ACCOUNT_CACHE_MAX)


def forget_accounts() -> None:
    """Drop every account row this process keeps for the proxy (the next call of each reads its row)."""
    _kept.clear()


def proxied_account(db: Session, account_id: int) -> tuple[ConnectedAccount, ProviderEntry]:
    """:func:`find_account` for the proxy: an API-key account's row comes from this process's copy while it is
    younger than :data:`ACCOUNT_CACHE_SECONDS` (see the module docstring). The copy is detached from every
    session and only read (its ``last_used_at`` aside)."""

    def read() -> tuple[_Account, bool]:
        account, provider = find_account(db, account_id)
        if provider.auth_mode != AuthMode.API_KEY:
            return (account, provider), False
        # Out of the request's session, so its commit does not expire what other threads will read.
        config = account.provider_config
        db.expunge(account)
        db.expunge(config)
        return (account, provider), True

    return _kept.get((session_engine(db), account_id), read)


@event.listens_for(Session, "after_flush")
def _flushed(session: Session, _flush: UOWTransaction) -> None:
    if any(isinstance(obj, _WATCHED) for obj in (*session.dirty, *session.deleted, *session.new)):
        _changed(session)


@event.listens_for(Session, "do_orm_execute")
def _bulk(state: ORMExecuteState) -> None:
    if (state.is_update or state.is_delete) and any(mapper.class_ in _WATCHED for mapper in state.all_mappers):
        _changed(state.session)


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    if session.info.pop(_CHANGED, False):
        forget_accounts()


_CHANGED: Final = "ami_proxy_accounts_changed"


def _changed(session: Session) -> None:
    forget_accounts()
    session.info[_CHANGED] = True


def prepare(
    db: Session,
    cipher: Cipher,
    rt: OAuthRuntime,
    account: ConnectedAccount,
    provider: ProviderEntry,
    *,
    method: str,
    path: str,
    query_string: str,
    headers: Iterable[tuple[str, str]],
    ctx: audit.AuditContext,
) -> Target:
    """Check the request against the catalog and the account's state; return where it goes, with what.

    May commit (an OAuth refresh commits its own transaction).
    """
    spec = provider.proxy
    if spec is None:
        raise AppError("not_found", f"{provider.display_name} accounts cannot be used through the proxy.")
    path = clean_path(path)
    _check_allowed(provider, spec, method, path)
    base = _base_url(provider, spec, account)
    bearer: str | None = None
    if provider.auth_mode == AuthMode.API_KEY:
        auth = proxy_auth(db, cipher, account, ctx)
    else:
        token = current_token(db, rt, provider, account)
        bearer = token.value
        if provider.headers:
            auth = render_auth(provider, account_values(provider, account), {}, {"access_token": token.value})
        else:
            # RFC 6750 §2.1, for entries that name no headers of their own.
            auth = RequestAuth({"Authorization": f"{token.token_type.title()} {token.value}"}, {})
    url = base + path + (f"?{query_string}" if query_string else "")
    sent = caller_headers(headers, [*auth.headers, *auth.query])
    return Target(
        account_id=account.id,
        provider_type=provider.id,
        auth_mode=provider.auth_mode,
        url=url,
        headers=[*sent, *auth.headers.items()],
        query=dict(auth.query),
        bearer=bearer,
    )


def _limit_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value[:200] for name, value in headers if _LIMIT_HEADER.match(name.lower())}


def note_response(
    db: Session,
    rt: OAuthRuntime,
    target: Target,
    status: int,
    headers: Iterable[tuple[str, str]],
) -> str | None:
    """Record what the upstream said about the account (rate limits, a refused credential); commits.

    Returns what a 401 led to (for the audit event), else ``None``.
    """
    limits = _limit_headers(headers)
    if limits and _due(database_key(db), target.account_id, urgent=status == 429 or "retry-after" in limits):
        account = db.get(ConnectedAccount, target.account_id)
        if account is not None:
            data: dict[str, Any] = dict(account.provider_data or {})
            data[LIMITS_KEY] = {"status": status, "at": utcnow().isoformat(), "headers": limits}
            db.execute(
                update(ConnectedAccount)
                .where(ConnectedAccount.id == target.account_id)
                # Naming updated_at keeps its onupdate from firing (it keys the header cache).
                .values(provider_data=data, updated_at=ConnectedAccount.updated_at)
                .execution_options(synchronize_session=False)
            )
            db.commit()
    if status != 401:
        return None
    account = db.get(ConnectedAccount, target.account_id)
    if account is None:
        return None
    if target.bearer is not None:
        return note_unauthorized(db, rt, account, target.bearer)
    db.execute(
        update(ConnectedAccount)
        .where(ConnectedAccount.id == target.account_id, ConnectedAccount.status == "active")
        .values(
            status="failing",
            last_error_code="invalid_credentials",
            last_error_hint="The provider refused the key (HTTP 401 through the proxy). Replace it in the "
            "account's secret dialog.",
            last_error_at=utcnow(),
            error_attempts=ConnectedAccount.error_attempts + 1,
        )
        .execution_options(synchronize_session=False)
    )
    db.commit()
    return "invalid_credentials"


def _due(database: str, account_id: int, *, urgent: bool) -> bool:
    now = time.monotonic()
    with _limits_lock:
        last = _limits_written.get((database, account_id))
        if not urgent and last is not None and now - last < LIMITS_EVERY:
            return False
        _limits_written[(database, account_id)] = now
        return True
