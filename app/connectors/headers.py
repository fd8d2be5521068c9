"""Headers (and query parameters) to authenticate a request with a connected account's API key.

The catalog entry says what to send: header templates like ``Authorization: Bearer ${secret.api_key}``,
conditional ones (``when: {config.auth_type: header}``), ``omit_if_empty`` ones (OpenAI-Organization), HTTP
Basic (RFC 7617) and query parameters. This module renders them; it never decides per provider.

Two entry points:

* :func:`get_headers` → ``dict[str, str]``: what most callers want.
* :func:`request_auth` → :class:`RequestAuth` with ``headers`` **and** ``query``. A generic API-key account
  whose ``auth_type`` is ``query`` sends its key as a query parameter, which a header dict cannot carry;
  :func:`get_headers` refuses such an account (``invalid_config``) rather than silently returning headers
  without the credential. ``GET /api/account-manager/accounts/<id>/headers`` returns both.

Secret fields with an ``env_fallback`` (HuggingFace ``HF_TOKEN``) use that environment variable when the
account has no stored value.

Cost and bookkeeping (the goal is tens of thousands of calls per second in process):

* Rendered results are cached per process, keyed by the account row and its config row *as the caller
  loaded them* (ids + ``updated_at``), for at most :data:`CACHE_TTL` seconds. Replacing, rolling back or
  editing an account changes its ``updated_at``, so the next caller that loads the row gets fresh
  headers; pass a freshly loaded account. Plaintext in this cache is no new exposure: the same process
  holds the master keys that decrypt every secret.
* ``last_used_at`` is written at most once a minute per account: a per-process clock decides when to try,
  and the UPDATE itself only matches a row whose ``last_used_at`` is older than a minute, so several
  workers together still write it at most once a minute. The write joins the caller's transaction (the
  caller commits, as everywhere in the logic layer).
* Audit: the HTTP endpoint records one ``account.headers.disclosed`` event per call — each is a secret
  handed to a remote caller. In-process calls are counted in memory and recorded as one
  ``account.headers.used`` event per account per minute (``details.calls`` = calls since the last event),
  written with the ``last_used_at`` update; calls in a process that exits before its next minute are lost.
"""

from __future__ import annotations

import base64
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import Engine, bindparam, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from app import audit
from app.errors import AppError
from app.i18n import gettext as _
from app.models import ConnectedAccount, ProviderConfig
from app.models.base import ID_MAX, utcnow
from app.providers.catalog_messages import catalog_text
from app.providers.entries import Condition, ProviderEntry
from app.providers.registry import entry as catalog_entry
from app.providers.templating import referenced_values_blank, references, render_template_string
from app.providers.types import AuthMode, Which
from app.providers.validation import effective_values
from app.providers.verify_context import ValuesByScope
from app.vault import Cipher, Secret, get_secret

__all__ = [
    "CACHE_TTL",
    "OWNER",
    "USE_INTERVAL",
    "RequestAuth",
    "account_values",
    "clear_cache",
    "disclose",
    "forget_account",
    "get_headers",
    "load_secrets",
    "proxy_auth",
    "render_auth",
    "request_auth",
]

# The vault owner type of a connected account's secret fields.
OWNER: Final = "connected_account"
USE_INTERVAL: Final = timedelta(seconds=60)
CACHE_TTL: Final = 300.0
CACHE_MAX: Final = 4096
SYSTEM: Final = audit.AuditContext(actor="system")


@dataclass(frozen=True)
class RequestAuth:
    """What to add to a request: headers, and query parameters (only generic ``auth_type: query``)."""

    headers: Mapping[str, str]
    query: Mapping[str, str]

    def names(self) -> dict[str, list[str]]:
        """Header and parameter names only — what an audit event may say about a disclosure."""
        return {"header_names": sorted(self.headers), "query_names": sorted(self.query)}


# ------------------------------------------------------------------------------------------ rendering


def account_values(provider: ProviderEntry, account: ConnectedAccount) -> dict[Which, dict[str, Any]]:
    """The account's and its config's non-secret values, with catalog defaults and implied values."""
    return {
        "config": effective_values(provider, "config", account.provider_config.config or {}),
        "account": effective_values(provider, "account", account.identifiers or {}),
    }


def load_secrets(
    db: Session,
    cipher: Cipher,
    provider: ProviderEntry,
    account_id: int,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Secret | None]:
    """Decrypt the account's secret fields; a field with ``env_fallback`` and no stored value takes the
    environment variable (``SecretUnreadable`` when a stored value cannot be decrypted)."""
    env = os.environ if environ is None else environ
    values: dict[str, Secret | None] = {}
    for spec in provider.secret_fields("account"):
        value = get_secret(db, cipher, OWNER, account_id, spec.name)
        if value is None and spec.env_fallback and env.get(spec.env_fallback):
            value = Secret(env[spec.env_fallback])
        values[spec.name] = value
    return values


def _applies(condition: Condition | None, values: ValuesByScope) -> bool:
    return condition is None or condition.matches(values)


def _missing_secret(provider: ProviderEntry, template: str, secrets: Mapping[str, Secret | None]) -> str | None:
    for ref in references(template):
        if ref.scope == "secret" and not secrets.get(ref.name):
            return ref.name
    return None


def _no_secret_error(provider: ProviderEntry, name: str) -> AppError:
    spec = provider.field("account", name) or provider.field("config", name)
    label = catalog_text(spec.label) if spec is not None else name
    if spec is not None and spec.env_fallback:
        variable = spec.env_fallback
        return AppError(
            "invalid_config",
            _("This account has no %(label)s stored.", label=label),
            _(
                "Enter the %(label)s (or %(variable)s in the server's environment) in the account's secret dialog.",
                label=label,
                variable=variable,
            ),
            fields={
                name: _(
                    "No %(label)s is stored (or %(variable)s in the server's environment).",
                    label=label,
                    variable=variable,
                )
            },
        )
    return AppError(
        "invalid_config",
        _("This account has no %(label)s stored.", label=label),
        _("Enter the %(label)s in the account's secret dialog.", label=label),
        fields={name: _("No %(label)s is stored.", label=label)},
    )


def render_auth(
    provider: ProviderEntry,
    values: ValuesByScope,
    secrets: Mapping[str, Secret | None],
    token: Mapping[str, Any] | None = None,
) -> RequestAuth:
    """Render the entry's headers and query parameters. Pure: no I/O, nothing cached.

    ``token`` holds an OAuth account's ``access_token`` for the ``${token.…}`` references (bearer headers).

    A header whose secret is missing raises ``invalid_config`` on that field (sending a request with a
    blank credential would only earn a confusing 401); ``omit_if_empty`` headers are left out instead.
    """
    scopes: dict[str, Mapping[str, Any]] = {
        "config": values.get("config", {}),
        "account": values.get("account", {}),
        "secret": secrets,
        "token": token or {},
    }
    headers: dict[str, str] = {}
    for spec in provider.headers:
        if not _applies(spec.when, values):
            continue
        templates = [spec.name, *(spec.basic or ()), *([spec.value] if spec.value is not None else [])]
        if spec.omit_if_empty and any(referenced_values_blank(t, **scopes) for t in templates):
            continue
        for template in templates:
            missing = _missing_secret(provider, template, secrets)
            if missing is not None:
                raise _no_secret_error(provider, missing)
        name = render_template_string(spec.name, **scopes)
        if spec.basic is not None:
            user = render_template_string(spec.basic[0], **scopes)
            password = render_template_string(spec.basic[1], **scopes)
            # RFC 7617 §2: user-id and password joined by a colon, UTF-8, base64.
            basic = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            headers[name] = f"Basic {basic}"
        else:
            assert spec.value is not None  # the schema requires value or basic
            headers[name] = render_template_string(spec.value, **scopes)
    query: dict[str, str] = {}
    for param in provider.query:
        if not _applies(param.when, values):
            continue
        if param.omit_if_empty and referenced_values_blank(param.value, **scopes):
            continue
        missing = _missing_secret(provider, param.value, secrets)
        if missing is not None:
            raise _no_secret_error(provider, missing)
        query[render_template_string(param.name, **scopes)] = render_template_string(param.value, **scopes)
    return RequestAuth(headers, query)


# ------------------------------------------------------------------------------- per-process state


class _State:
    """Per database engine (tests run several apps in one process, each with its own account ids)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cache: OrderedDict[int, tuple[tuple[Any, ...], float, RequestAuth]] = OrderedDict()
        # account id → (when last_used_at was last written from here, in-process calls since then)
        self.usage: dict[int, tuple[datetime | None, int]] = {}


_STATES: weakref.WeakKeyDictionary[Engine, _State] = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()


def _state(db: Session) -> _State:
    bind = db.get_bind()
    engine = bind if isinstance(bind, Engine) else bind.engine
    state = _STATES.get(engine)
    if state is None:
        with _STATES_LOCK:
            state = _STATES.setdefault(engine, _State())
    return state


def forget_account(db: Session, account_id: int) -> None:
    """Drop an account's cached headers and usage counters (after a delete or a secret change)."""
    state = _state(db)
    with state.lock:
        state.cache.pop(account_id, None)
        state.usage.pop(account_id, None)


def clear_cache(*, usage: bool = True) -> None:
    """Forget every cached result, and (``usage``) the in-memory use counters (tests, benchmarks)."""
    with _STATES_LOCK:
        states = list(_STATES.values())
    for state in states:
        with state.lock:
            state.cache.clear()
            if usage:
                state.usage.clear()


def _cache_key(account: ConnectedAccount) -> tuple[Any, ...]:
    cfg = account.provider_config
    return (account.updated_at, account.rotated_at, account.provider_config_id, cfg.updated_at)


def _check_usable(provider: ProviderEntry, account: ConnectedAccount) -> None:
    _check_state(provider, account.provider_config.enabled, account.provider_config.name, account.status)


def _check_state(provider: ProviderEntry, config_enabled: bool, config_name: str, status: str) -> None:
    # ``conflict``: the account's state does not allow it, the code refresh and the dialogs give for the same causes.
    if provider.auth_mode != AuthMode.API_KEY:
        raise AppError(
            "conflict",
            _("%(provider)s accounts do not authenticate with request headers.", provider=provider.display_name),
            _("Headers are for API-key providers (OpenAI, Anthropic, Hugging Face, generic API keys)."),
        )
    if not config_enabled:
        raise AppError(
            "conflict",
            _("The provider config “%(name)s” is disabled.", name=config_name),
            _("An admin can enable it again under Providers."),
        )
    if status == "pending":
        raise AppError(
            "conflict",
            _("This account has no secret yet."),
            _("Enter its API key in the account's secret dialog first."),
        )


def _cached(state: _State, account_id: int, key: tuple[Any, ...]) -> RequestAuth | None:
    """The cached result for the account, if it was rendered from rows with this key and is still fresh."""
    with state.lock:
        hit = state.cache.get(account_id)
    if hit is not None and hit[0] == key and hit[1] > time.monotonic():
        return hit[2]
    return None


def _resolve(db: Session, cipher: Cipher, account: ConnectedAccount, environ: Mapping[str, str] | None) -> RequestAuth:
    provider = catalog_entry(account.provider_config.provider_type)
    _check_usable(provider, account)
    state = _state(db)
    key = _cache_key(account)
    hit = _cached(state, account.id, key) if environ is None else None
    if hit is not None:
        return hit
    now = time.monotonic()
    values = account_values(provider, account)
    result = render_auth(provider, values, load_secrets(db, cipher, provider, account.id, environ))
    if environ is None:
        with state.lock:
            state.cache[account.id] = (key, now + CACHE_TTL, result)
            state.cache.move_to_end(account.id)
            while len(state.cache) > CACHE_MAX:
                state.cache.popitem(last=False)
    return result


def _note_use(
    db: Session,
    account_id: int,
    account: ConnectedAccount | None,
    ctx: audit.AuditContext,
    per_call_audit: bool,
    now: datetime | None,
) -> None:
    """Count the call; write last_used_at (and, for in-process calls, the aggregated audit event) when due."""
    state = _state(db)
    at = now or utcnow()
    with state.lock:
        written, calls = state.usage.get(account_id, (None, 0))
        if not per_call_audit:
            calls += 1
        due = written is None or at - written >= USE_INTERVAL
        state.usage[account_id] = (at, 0) if due else (written, calls)
    if not due:
        return
    result = db.execute(
        update(ConnectedAccount)
        .where(
            ConnectedAccount.id == account_id,
            or_(ConnectedAccount.last_used_at.is_(None), ConnectedAccount.last_used_at <= at - USE_INTERVAL),
        )
        # Naming updated_at keeps its onupdate from firing: a timestamp is not a change to the account.
        .values(last_used_at=at, updated_at=ConnectedAccount.updated_at)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) and account is not None:
        set_committed_value(account, "last_used_at", at)
    if calls:
        audit.record(
            db,
            ctx,
            "account.headers.used",
            target=f"connected_account:{account_id}",
            details={"via": "python", "calls": calls, "since": written},
        )


def request_auth(
    db: Session,
    cipher: Cipher,
    account: ConnectedAccount,
    *,
    ctx: audit.AuditContext = SYSTEM,
    per_call_audit: bool = False,
    environ: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> RequestAuth:
    """Headers and query parameters for ``account`` (see the module docstring for caching and audit).

    ``per_call_audit``: record an ``account.headers.disclosed`` event for this call (the HTTP endpoint).
    ``environ`` replaces ``os.environ`` for env fallbacks (tests); results are then not cached.
    Raises ``conflict`` (not an API-key account, config disabled, no secret) or ``secret_unreadable``.
    """
    result = _resolve(db, cipher, account, environ)
    return _used(db, account.id, account, result, ctx, per_call_audit, now)


def _used(
    db: Session,
    account_id: int,
    account: ConnectedAccount | None,
    result: RequestAuth,
    ctx: audit.AuditContext,
    per_call_audit: bool,
    now: datetime | None,
) -> RequestAuth:
    _note_use(db, account_id, account, ctx, per_call_audit, now)
    if per_call_audit:
        audit.record(
            db,
            ctx,
            "account.headers.disclosed",
            target=f"connected_account:{account_id}",
            details={"via": "api", **result.names()},
        )
    return result


# What the cache key and the usability checks need, without loading the account and its config as objects.
_CA, _PC = ConnectedAccount, ProviderConfig
_STATE_QUERY: Final = (
    select(
        _CA.updated_at,
        _CA.rotated_at,
        _CA.provider_config_id,
        _PC.updated_at.label("config_updated_at"),
        _CA.status,
        _PC.enabled,
        _PC.name,
        _PC.provider_type,
    )
    .join(_PC, _PC.id == _CA.provider_config_id)
    .where(_CA.id == bindparam("account_id"))
)


def disclose(
    db: Session,
    cipher: Cipher,
    account_id: int,
    *,
    ctx: audit.AuditContext,
    usable_modes: Collection[AuthMode],
    now: datetime | None = None,
) -> RequestAuth:
    """:func:`request_auth` with ``per_call_audit`` for an account id (the HTTP endpoint).

    A cached result costs one narrow SELECT (the cache key and what the usability checks read) instead of
    loading the account and its config as ORM objects; a miss loads them and renders as usual. An id
    that is not an account of ``usable_modes`` is ``not_found``, like the console's lookups.
    """
    row = (
        db.connection().execute(_STATE_QUERY, {"account_id": account_id}).first() if 0 < account_id <= ID_MAX else None
    )
    provider = catalog_entry(row.provider_type) if row is not None else None
    if row is None or provider is None or provider.auth_mode not in usable_modes:
        raise AppError("not_found", _("There is no such connected account."))
    _check_state(provider, row.enabled, row.name, row.status)
    key = (row.updated_at, row.rotated_at, row.provider_config_id, row.config_updated_at)
    hit = _cached(_state(db), account_id, key)
    if hit is not None:
        return _used(db, account_id, None, hit, ctx, True, now)
    account = db.get(ConnectedAccount, account_id)
    if account is None:
        raise AppError("not_found", _("There is no such connected account."))
    return request_auth(db, cipher, account, ctx=ctx, per_call_audit=True, now=now)


def proxy_auth(db: Session, cipher: Cipher, account: ConnectedAccount, ctx: audit.AuditContext) -> RequestAuth:
    """What the proxy adds to a request made with API-key ``account``: cached like :func:`request_auth`, with
    ``last_used_at`` kept, but no audit event of its own (the proxy records one per call, with the outcome)."""
    result = _resolve(db, cipher, account, None)
    _note_use(db, account.id, account, ctx, True, None)
    return result


def get_headers(db: Session, cipher: Cipher, account: ConnectedAccount) -> dict[str, str]:
    """The headers to send with a request made on behalf of ``account`` (a fresh dict per call).

    Raises ``invalid_config`` for an account that authenticates with a query parameter: use
    :func:`request_auth` there, which returns the parameters too.
    """
    result = request_auth(db, cipher, account)
    if result.query:
        raise AppError(
            "invalid_config",
            "This account sends its key as a query parameter, not a header.",
            "Use app.connectors.headers.request_auth(), which returns the query parameters too.",
        )
    return dict(result.headers)
