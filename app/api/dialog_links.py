"""Single-use, short-lived links to a secure dialog, issued to the CMS. Logic only: no Flask request globals.

The CMS never sees a secret: it asks for a dialog (``POST /api/account-manager/dialogs``) and sends an
admin to the URL it gets back — in an iframe, or as a full page. The link:

* names what it edits (``kind`` + a provider config or an account) and where it returns (``return_to``,
  whose origin must be exactly one of AMI_AUTH_CMS_ORIGINS — checked when issued and again when used);
* holds 32 random bytes; only their SHA-256 is stored (a database leak gives no usable link);
* expires after :data:`TTL`;
* belongs to the first admin session that opens it (nobody else can open it after that; the same session
  may reload it, e.g. after a refused save), and is spent by "Save" or "Cancel": any use after that, or
  after it expired, is refused with an error page and no redirect.

Opening still needs an admin session: the link alone grants nothing. The end-user connect link
(``connect_account``, :func:`issue_connect`) is the exception that proves it: it names one user, and only that
user's own session may open it.

On an OAuth provider config the connect link sends that user through the provider's consent screen (the flow
Account → Connections uses). The pending authorization in the browser session names the link (never its token),
and the callback takes it only while the link is still unused and unexpired, and only in the session that
opened it (:func:`find_for_callback`): the account goes to the link's user, whoever the provider says signed in
there. A refused or failed consent spends the link with the outcome ``failed`` and returns ``status=failed``
with the taxonomy code in ``error``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from app import audit
from app.connectors import accounts
from app.errors import AppError, ErrorCode
from app.models import ConnectedAccount, DialogToken, ProviderConfig, User, utcnow
from app.models.dialogs import DialogKind, DialogOutcome
from app.providers import configs
from app.providers.validation import effective_values
from app.settings import Settings

KINDS: Final[tuple[DialogKind, ...]] = ("add_account", "replace_secret", "edit_provider_config")
# What each kind edits, and the scope a service token needs to ask for it.
TARGET_FIELD: Final[dict[DialogKind, str]] = {
    "add_account": "provider_config_id",
    "replace_secret": "account_id",
    "edit_provider_config": "provider_config_id",
    "connect_account": "provider_config_id",
}
KIND_SCOPE: Final[dict[DialogKind, Literal["accounts:write", "providers:write"]]] = {
    "add_account": "accounts:write",
    "replace_secret": "accounts:write",
    "edit_provider_config": "providers:write",
    "connect_account": "accounts:write",
}
# The end-user connect link (POST /api/account-manager/connect-links): an add_account dialog for one named user,
# opened by that user's own session, on a provider config whose `end_users_connect` field is on.
CONNECT: Final[DialogKind] = "connect_account"
CONNECT_FIELD: Final = "end_users_connect"
TTL: Final = timedelta(minutes=10)
# Spent and expired links are deleted this long after they expire (kept a while for the error page).
KEEP: Final = timedelta(days=1)
PATH: Final = "/dialogs/cms"
RETURN_TO_MAX: Final = 2000
_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]{43}")

Problem = Literal["unknown", "expired", "used", "elsewhere", "return_to", "signed_out"]


class DialogUnavailable(Exception):
    """The link cannot be used (see :data:`Problem`); the page says why and redirects nowhere."""

    def __init__(self, problem: Problem, record: DialogToken | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.record = record


@dataclass(frozen=True)
class IssuedDialog:
    record: DialogToken
    url: str = field(repr=False)


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


_REGEX_SPECIAL: Final = frozenset("\\^$.|?*+()[]{}")


def return_to_schema(settings: Settings) -> dict[str, object]:
    """The JSON Schema of ``return_to`` for this deployment: exactly what :func:`check_return_to` accepts."""
    if not settings.cms_origins:
        return {"type": "string", "not": {}, "description": "AMI_AUTH_CMS_ORIGINS is empty: no dialog can return."}
    escaped = ("".join("\\" + c if c in _REGEX_SPECIAL else c for c in origin) for origin in settings.cms_origins)
    return {
        "type": "string",
        "maxLength": RETURN_TO_MAX,
        # Printable ASCII without space and '#': the dialog appends its own query parameters.
        "pattern": "^(?:" + "|".join(escaped) + ')(?:[/?][!-"$-~]*)?$',
        "description": "The CMS page to come back to: an origin of AMI_AUTH_CMS_ORIGINS exactly as configured ("
        + ", ".join(settings.cms_origins)
        + "), then an optional path and query (no #fragment).",
    }


def check_return_to(settings: Settings, raw: object) -> str:
    """``return_to`` if it starts with exactly one of AMI_AUTH_CMS_ORIGINS (then a path or query, or nothing);
    else ``validation_failed`` on it. Compared as text, before any parsing, so no URL trick (userinfo,
    backslashes, a longer host name) can make it point anywhere else."""

    def refuse(message: str) -> AppError:
        return AppError("validation_failed", fields={"return_to": message})

    if not isinstance(raw, str) or not raw:
        raise refuse("Give the absolute URL of the CMS page to come back to.")
    if len(raw) > RETURN_TO_MAX:
        raise refuse(f"Use at most {RETURN_TO_MAX} characters.")
    if not raw.isascii() or any(ord(c) <= 32 or ord(c) == 127 for c in raw):
        raise refuse("Percent-encode spaces, control and non-ASCII characters.")
    if "#" in raw:
        raise refuse("Leave out the #fragment: the dialog adds ?status=… to the URL.")
    if not any(raw == origin or raw.startswith((origin + "/", origin + "?")) for origin in settings.cms_origins):
        listed = ", ".join(settings.cms_origins) or "none configured"
        raise refuse(f"It must start with an origin of AMI_AUTH_CMS_ORIGINS, exactly as configured ({listed}).")
    return raw


def return_url(record: DialogToken, outcome: DialogOutcome, error: ErrorCode | None = None) -> str:
    """``return_to`` with ``status`` and the account (or provider config) the dialog was about; for a ``failed``
    OAuth connect, ``error`` with the taxonomy code (e.g. ``consent_required`` when the user said no)."""
    parts = urlsplit(record.return_to)
    params = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in _RETURN_KEYS]
    params.append(("status", outcome))
    if error is not None:
        params.append(("error", error))
    if record.kind == "edit_provider_config" and record.provider_config_id is not None:
        params.append(("provider_config", str(record.provider_config_id)))
    else:
        account_id = record.result_account_id or record.account_id
        if account_id is not None:
            params.append(("account", str(account_id)))
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", urlencode(params), ""))


_RETURN_KEYS: Final = frozenset({"status", "account", "provider_config", "error"})


def _target(db: Session, kind: DialogKind, target_id: int) -> tuple[ProviderConfig | None, ConnectedAccount | None]:
    """Check that the target exists (``not_found``) and can take this kind of dialog (``conflict``)."""
    if kind == "replace_secret":
        account = db.get(ConnectedAccount, target_id)
        if account is None:
            raise AppError("not_found", f"There is no connected account with id {target_id}.")
        mode = configs.entry_for(account.provider_config).auth_mode
        if mode not in accounts.CONNECTABLE_MODES:
            raise AppError(
                "conflict",
                "OAuth accounts have no secret to type: their user reconnects them.",
                "Send the user to Account → Connections to reconnect.",
                fields={"account_id": "This is an OAuth account."},
            )
        if not account.provider_config.enabled:
            raise AppError(
                "conflict",
                f"The provider config “{account.provider_config.name}” is disabled.",
                "Enable it first.",
                fields={"account_id": "Its provider config is disabled."},
            )
        return None, account
    cfg = db.get(ProviderConfig, target_id)
    if cfg is None:
        raise AppError("not_found", f"There is no provider config with id {target_id}.")
    provider = configs.entry_for(cfg)
    if kind == CONNECT and provider.capabilities.oauth:
        # The end user goes through the provider's consent screen (see the module's docstring).
        if not cfg.enabled:
            raise AppError(
                "conflict",
                f"The provider config “{cfg.name}” is disabled.",
                "Enable it first (PATCH …/provider-configs/{id} with enabled: true).",
                fields={"provider_config_id": "This provider config is disabled."},
            )
    elif kind in ("add_account", CONNECT):
        if provider.auth_mode not in accounts.CONNECTABLE_MODES:
            raise AppError(
                "conflict",
                f"{provider.display_name} accounts are connected by their user through the provider's consent "
                "screen, not typed in a dialog.",
                "Send the user to Account → Connections.",
                fields={"provider_config_id": "Not an API-key or SMTP provider config."},
            )
        if not cfg.enabled:
            raise AppError(
                "conflict",
                f"The provider config “{cfg.name}” is disabled.",
                "Enable it first (PATCH …/provider-configs/{id} with enabled: true).",
                fields={"provider_config_id": "This provider config is disabled."},
            )
    elif not provider.secret_fields("config"):
        raise AppError(
            "conflict",
            f"{provider.display_name} configs have no secret fields.",
            "Change its other fields with PATCH /api/account-manager/provider-configs/{id}.",
            fields={"provider_config_id": "This provider type has no secret fields."},
        )
    return cfg, None


def _connect_target(db: Session, config_id: int, user_id: int) -> ProviderConfig:
    """An enabled API-key, SMTP or OAuth config that lets end users connect, and an active user to connect for."""
    cfg, _ = _target(db, CONNECT, config_id)
    assert cfg is not None
    provider = configs.entry_for(cfg)
    if not effective_values(provider, "config", cfg.config or {}).get(CONNECT_FIELD):
        raise AppError(
            "conflict",
            f"The provider config “{cfg.name}” does not let end users connect their own accounts.",
            f"An admin turns on “Let end users connect their own accounts” ({CONNECT_FIELD}) in the config.",
            fields={"provider_config_id": "End-user connect is off for this provider config."},
        )
    user = db.get(User, user_id)
    if user is None:
        raise AppError("not_found", f"There is no user with id {user_id}.", fields={"user_id": "No such user."})
    if not user.is_active:
        raise AppError("conflict", "This user is disabled.", fields={"user_id": "This user is disabled."})
    return cfg


def issue_connect(
    db: Session,
    settings: Settings,
    ctx: audit.AuditContext,
    *,
    provider_config_id: int,
    user_id: int,
    return_to: str,
    service_token_id: int | None = None,
    now: datetime | None = None,
) -> IssuedDialog:
    """An end-user connect link (the caller commits): only ``user_id``'s own session can open it."""
    _connect_target(db, provider_config_id, user_id)
    issued = issue(
        db,
        settings,
        ctx,
        kind=CONNECT,
        target_id=provider_config_id,
        return_to=return_to,
        service_token_id=service_token_id,
        now=now,
        for_user_id=user_id,
    )
    return issued


def issue(
    db: Session,
    settings: Settings,
    ctx: audit.AuditContext,
    *,
    kind: DialogKind,
    target_id: int,
    return_to: str,
    service_token_id: int | None = None,
    now: datetime | None = None,
    for_user_id: int | None = None,
) -> IssuedDialog:
    """A new link (the caller commits). ``return_to`` must have passed :func:`check_return_to`."""
    now = now or utcnow()
    cfg, account = _target(db, kind, target_id)
    db.execute(delete(DialogToken).where(DialogToken.expires_at < now - KEEP))
    raw = secrets.token_urlsafe(32)
    record = DialogToken(
        token_hash=hash_token(raw),
        kind=kind,
        provider_config_id=cfg.id if cfg is not None else None,
        account_id=account.id if account is not None else None,
        return_to=return_to,
        issued_by=ctx.actor[:320],
        service_token_id=service_token_id,
        for_user_id=for_user_id,
        created_at=now,
        expires_at=now + TTL,
    )
    db.add(record)
    db.flush()
    audit.record(
        db,
        ctx,
        "dialog.issue",
        target=f"dialog:{record.id}",
        details={
            "kind": kind,
            TARGET_FIELD[kind]: target_id,
            **({"user_id": for_user_id} if for_user_id is not None else {}),
            "return_origin": "{0.scheme}://{0.netloc}".format(urlsplit(return_to)),
            "expires_at": record.expires_at,
        },
    )
    return IssuedDialog(record, f"{settings.base_url.rstrip('/')}{PATH}?{urlencode({'dialog': raw})}")


def find(
    db: Session, settings: Settings, raw: str, *, session_id: str | None, now: datetime | None = None
) -> DialogToken:
    """The link's record if it can be used by this browser session (``None``: nobody signed in yet)."""
    if not _TOKEN.fullmatch(raw or ""):
        raise DialogUnavailable("unknown")
    record = db.scalar(select(DialogToken).where(DialogToken.token_hash == hash_token(raw)))
    if record is None:
        raise DialogUnavailable("unknown")
    return _usable(settings, record, session_id=session_id, now=now or utcnow())


def find_for_callback(
    db: Session, settings: Settings, record_id: object, *, session_id: str | None, now: datetime | None = None
) -> DialogToken:
    """The connect link an OAuth callback belongs to (its id came from this browser's pending authorization),
    if it is still usable and was opened by this very session: ``signed_out`` without one, ``elsewhere`` when
    another session opened it (e.g. someone else signed in on this browser meanwhile)."""
    record = db.get(DialogToken, record_id) if isinstance(record_id, int) else None
    if record is None or record.kind != CONNECT:
        raise DialogUnavailable("unknown")
    _usable(settings, record, session_id=session_id, now=now or utcnow())
    if session_id is None:
        raise DialogUnavailable("signed_out", record)
    if record.opened_session != session_id:
        raise DialogUnavailable("elsewhere", record)
    return record


def _usable(settings: Settings, record: DialogToken, *, session_id: str | None, now: datetime) -> DialogToken:
    if record.used_at is not None:
        raise DialogUnavailable("used", record)
    if record.expires_at <= now:
        raise DialogUnavailable("expired", record)
    if record.opened_session is not None and session_id is not None and record.opened_session != session_id:
        raise DialogUnavailable("elsewhere", record)
    try:
        check_return_to(settings, record.return_to)
    except AppError:
        # AMI_AUTH_CMS_ORIGINS changed since the link was issued: never send anyone there.
        raise DialogUnavailable("return_to", record) from None
    return record


def claim(db: Session, ctx: audit.AuditContext, record: DialogToken, *, session_id: str, user_id: int) -> None:
    """Bind the link to the first admin session that opens it (compare-and-set: two sessions racing for it
    cannot both win). The caller commits."""
    if record.opened_session == session_id:
        return
    dt = DialogToken
    won = db.execute(
        update(dt)
        .where(dt.id == record.id, dt.opened_session.is_(None), dt.used_at.is_(None))
        .values(opened_session=session_id, opened_by=user_id, opened_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    db.refresh(record)
    if getattr(won, "rowcount", 0) != 1 and record.opened_session != session_id:
        raise DialogUnavailable("elsewhere", record)
    audit.record(db, ctx, "dialog.open", target=f"dialog:{record.id}", details={"kind": record.kind})


def finish(
    db: Session,
    ctx: audit.AuditContext,
    record: DialogToken,
    *,
    session_id: str,
    outcome: DialogOutcome,
    account_id: int | None = None,
) -> None:
    """Spend the link, in the transaction that saved (or with nothing saved, for a cancel). Raises
    ``DialogUnavailable("used")`` when another request spent it first: the caller rolls back."""
    dt = DialogToken
    spent = db.execute(
        update(dt)
        .where(dt.id == record.id, dt.used_at.is_(None), dt.opened_session == session_id)
        .values(used_at=utcnow(), outcome=outcome, result_account_id=account_id)
        .execution_options(synchronize_session=False)
    )
    if getattr(spent, "rowcount", 0) != 1:
        raise DialogUnavailable("used", record)
    db.refresh(record)
    details: dict[str, object] = {"kind": record.kind}
    if account_id is not None:
        details["account_id"] = account_id
    audit.record(db, ctx, f"dialog.{outcome}", target=f"dialog:{record.id}", details=details)


def note_refusal(db: Session, ctx: audit.AuditContext, problem: Problem, record: DialogToken | None) -> None:
    """Audit a refused use of a known link (unknown tokens are not recorded: they name nothing)."""
    if record is None:
        return
    audit.record(
        db,
        ctx,
        "dialog.refused",
        target=f"dialog:{record.id}",
        outcome="denied",
        details={"kind": record.kind, "reason": problem},
    )
