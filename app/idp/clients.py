"""Relying parties of the OpenID Provider: create, update, rotate the secret, delete — the rules the CLI (and, in
issue 12's second half, the console, the JSON API and YAML) share.

Values come in as a mapping of RFC 7591-like names (``name``, ``client_type``, ``auth_method``, ``redirect_uris``,
``post_logout_redirect_uris``, ``backchannel_logout_uri``, ``jwks_uri``, ``grant_types``, ``scopes``,
``audiences``, ``require_pkce``, ``first_party``, ``id_token_alg``, ``access_token_ttl``, ``refresh_token_ttl``,
``id_token_ttl``, ``enabled``); a bad one is ``validation_failed`` naming that field. A client secret is 32 random
bytes, returned once by the call that made it and stored as its SHA-256. Every change is audited (field names,
never a secret).

Functions take a Session and never commit: the caller owns the transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import itertools
import re
import secrets
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final
from urllib.parse import urlsplit

from sqlalchemy import event, select
from sqlalchemy.orm import Session, UOWTransaction

from app import audit
from app.audit import AuditContext
from app.errors import N_, AppError
from app.idp.claims import STANDARD_SCOPES
from app.idp.keys import ALGORITHMS, DEFAULT_ALG, MAX_TOKEN_LIFETIME
from app.models import OidcClient

CLIENT_TYPES: Final = ("confidential", "public")
CONFIDENTIAL_METHODS: Final = ("client_secret_basic", "client_secret_post", "private_key_jwt")
SECRET_METHODS: Final = ("client_secret_basic", "client_secret_post")
GRANT_TYPES: Final = ("authorization_code", "refresh_token", "client_credentials")
NAME_MAX: Final = 200
URI_MAX: Final = 2000
LIST_MAX: Final = 20
AUDIENCE_MAX: Final = 200
ACCESS_TTL: Final = (60, int(MAX_TOKEN_LIFETIME.total_seconds()))
ID_TTL: Final = (60, int(MAX_TOKEN_LIFETIME.total_seconds()))
REFRESH_TTL: Final = (300, 365 * 86400)
SECRET_PREFIX: Final = "amic_"
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN: Final = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,100}")
_LOOPBACK_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True)
class ClientSettings:
    """A client's registration, validated (what :func:`clean` returns and the model stores)."""

    name: str
    client_type: str = "confidential"
    auth_method: str = "client_secret_basic"
    redirect_uris: tuple[str, ...] = ()
    post_logout_redirect_uris: tuple[str, ...] = ()
    backchannel_logout_uri: str | None = None
    jwks_uri: str | None = None
    grant_types: tuple[str, ...] = ("authorization_code", "refresh_token")
    scopes: tuple[str, ...] = STANDARD_SCOPES
    audiences: tuple[str, ...] = ()
    require_pkce: bool = True
    first_party: bool = False
    id_token_alg: str = DEFAULT_ALG
    access_token_ttl: int = 600
    refresh_token_ttl: int = 30 * 86400
    id_token_ttl: int = 3600
    enabled: bool = True


FIELDS: Final = tuple(f.name for f in fields(ClientSettings))


@dataclass
class Changes:
    """What a save changed, by field name (what the audit log and a dry run report)."""

    fields: list[str] = field(default_factory=list)
    secret_rotated: bool = False
    created: bool = False

    def __bool__(self) -> bool:
        return bool(self.fields or self.secret_rotated or self.created)


@dataclass(frozen=True)
class Saved:
    """A created client, or one whose secret was rotated: ``secret`` exists only here (shown once)."""

    client: OidcClient
    changes: Changes
    secret: str | None = field(default=None, repr=False)


# --- secrets -------------------------------------------------------------------------------------------------


def hash_secret(secret: str) -> str:
    # 32 random bytes: a fast hash suffices (no low-entropy secret to brute-force), and keeps the token endpoint fast.
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


# 24 letters and digits (143 bits): nothing a shell or a command line takes for an option, as "-" or "_" first might be.
_CLIENT_ID_ALPHABET: Final = string.ascii_letters + string.digits


def new_client_id() -> str:
    return "".join(secrets.choice(_CLIENT_ID_ALPHABET) for _ in range(24))


def check_secret(client: OidcClient, presented: str) -> bool:
    if not client.secret_hash or not presented:
        return False
    return hmac.compare_digest(client.secret_hash, hash_secret(presented))


# --- validation ----------------------------------------------------------------------------------------------


def _fail(name: str, message: str) -> AppError:
    return AppError("validation_failed", fields={name: message})


def _text(values: Mapping[str, Any], name: str, default: str | None) -> str | None:
    if name not in values:
        return default
    raw = values[name]
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise _fail(name, N_("Enter text."))
    return raw.strip() or None


def _list(values: Mapping[str, Any], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    if name not in values:
        return default
    raw = values[name]
    if raw is None:
        return ()
    items: list[Any] = raw.split() if isinstance(raw, str) else list(raw) if isinstance(raw, list | tuple) else [raw]
    result: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise _fail(name, N_("Enter a list of text values."))
        value = item.strip()
        if value and value not in result:
            result.append(value)
    if len(result) > LIST_MAX:
        raise _fail(name, N_("Enter at most %(count)s values.", count=LIST_MAX))
    return tuple(result)


def _bool(values: Mapping[str, Any], name: str, default: bool) -> bool:
    if name not in values:
        return default
    raw = values[name]
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in {"true", "yes", "on", "1", "false", "no", "off", "0"}:
        return raw.strip().lower() in {"true", "yes", "on", "1"}
    raise _fail(name, N_("Enter true or false."))


def _int(values: Mapping[str, Any], name: str, default: int, bounds: tuple[int, int]) -> int:
    if name not in values:
        return default
    raw = values[name]
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise _fail(name, N_("Enter a whole number of seconds."))
    try:
        value = int(raw)
    except ValueError:
        raise _fail(name, N_("Enter a whole number of seconds.")) from None
    low, high = bounds
    if not low <= value <= high:
        raise _fail(name, N_("Enter between %(low)s and %(high)s seconds.", low=low, high=high))
    return value


def _choice(values: Mapping[str, Any], name: str, default: str, choices: Iterable[str]) -> str:
    value = _text(values, name, default) or default
    allowed = tuple(choices)
    if value not in allowed:
        raise _fail(name, N_("Choose one of: %(options)s.", options=", ".join(allowed)))
    return value


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_uri(name: str, uri: str, *, production: bool) -> str:
    """An absolute http(s) URI without a fragment (RFC 6749 §3.1.2); http only on a loopback host in production."""
    if len(uri) > URI_MAX:
        raise _fail(name, N_("Use at most %(limit)s characters per address.", limit=URI_MAX))
    try:
        parts = urlsplit(uri)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise _fail(name, N_("%(uri)s is not a valid address.", uri=repr(uri))) from None
    if parts.scheme not in ("https", "http") or not host:
        raise _fail(name, N_("%(uri)s must be an absolute https:// address.", uri=repr(uri)))
    if parts.fragment or "#" in uri:
        raise _fail(name, N_("%(uri)s must not have a #fragment.", uri=repr(uri)))
    if parts.username or parts.password:
        raise _fail(name, N_("%(uri)s must not hold a user name or password.", uri=repr(uri)))
    if parts.scheme == "http" and production and not _is_loopback(host):
        raise _fail(name, N_("%(uri)s must use https (http is for 127.0.0.1 and localhost only).", uri=repr(uri)))
    return uri


def clean(
    values: Mapping[str, Any], current: ClientSettings | None = None, *, production: bool = False
) -> ClientSettings:
    """Validate a registration (all fields, or the changed ones over ``current``); the first bad field raises."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise _fail(unknown[0], N_("Unknown setting %(name)s.", name=repr(unknown[0])))
    base = current or ClientSettings(name="")
    name = _text(values, "name", base.name) or ""
    if not name:
        raise _fail("name", N_("This field is required."))
    if len(name) > NAME_MAX:
        raise _fail("name", N_("Use at most %(limit)s characters.", limit=NAME_MAX))
    client_type = _choice(values, "client_type", base.client_type, CLIENT_TYPES)
    default_method = "none" if client_type == "public" else base.auth_method
    if default_method == "none" and client_type == "confidential":
        default_method = "client_secret_basic"
    auth_method = _choice(
        values, "auth_method", default_method, ("none",) if client_type == "public" else CONFIDENTIAL_METHODS
    )
    grant_types = _list(values, "grant_types", base.grant_types)
    for grant in grant_types:
        if grant not in GRANT_TYPES:
            raise _fail(
                "grant_types",
                N_(
                    "%(grant)s is not supported; choose from %(options)s.",
                    grant=repr(grant),
                    options=", ".join(GRANT_TYPES),
                ),
            )
    if not grant_types:
        raise _fail("grant_types", N_("Choose at least one grant type."))
    if "client_credentials" in grant_types and client_type == "public":
        raise _fail(
            "grant_types", N_("client_credentials is for confidential clients (a public client has no secret).")
        )
    if "refresh_token" in grant_types and "authorization_code" not in grant_types:
        raise _fail("grant_types", N_("refresh_token needs authorization_code (refresh tokens come with codes)."))
    redirect_uris = tuple(
        check_uri("redirect_uris", u, production=production) for u in _list(values, "redirect_uris", base.redirect_uris)
    )
    if "authorization_code" in grant_types and not redirect_uris:
        raise _fail("redirect_uris", N_("Enter at least one redirect URI (where the app receives the code)."))
    post_logout = tuple(
        check_uri("post_logout_redirect_uris", u, production=production)
        for u in _list(values, "post_logout_redirect_uris", base.post_logout_redirect_uris)
    )
    backchannel = _text(values, "backchannel_logout_uri", base.backchannel_logout_uri)
    if backchannel is not None:
        check_uri("backchannel_logout_uri", backchannel, production=production)
    jwks_uri = _text(values, "jwks_uri", base.jwks_uri)
    if jwks_uri is not None:
        check_uri("jwks_uri", jwks_uri, production=production)
    if auth_method == "private_key_jwt" and jwks_uri is None:
        raise _fail("jwks_uri", N_("private_key_jwt needs the address of the client's public keys (JWKS)."))
    scopes = _list(values, "scopes", base.scopes)
    for scope in scopes:
        if not _SCOPE_TOKEN.fullmatch(scope):
            raise _fail(
                "scopes",
                N_("%(scope)s is not a valid scope (printable characters, no quotes or spaces).", scope=repr(scope)),
            )
    if "authorization_code" in grant_types and "openid" not in scopes:
        raise _fail("scopes", N_("Include openid: apps that sign people in need it."))
    audiences = _list(values, "audiences", base.audiences)
    for audience in audiences:
        if len(audience) > AUDIENCE_MAX:
            raise _fail("audiences", N_("Use at most %(limit)s characters per audience.", limit=AUDIENCE_MAX))
    require_pkce = _bool(values, "require_pkce", base.require_pkce)
    if client_type == "public" and not require_pkce:
        # OAuth 2.0 Security BCP (RFC 9700 §2.1.1): a public client's code is only safe with PKCE.
        raise _fail("require_pkce", N_("Public clients must use PKCE."))
    return ClientSettings(
        name=name,
        client_type=client_type,
        auth_method=auth_method,
        redirect_uris=redirect_uris,
        post_logout_redirect_uris=post_logout,
        backchannel_logout_uri=backchannel,
        jwks_uri=jwks_uri,
        grant_types=grant_types,
        scopes=scopes,
        audiences=audiences,
        require_pkce=require_pkce,
        first_party=_bool(values, "first_party", base.first_party),
        id_token_alg=_choice(values, "id_token_alg", base.id_token_alg, ALGORITHMS),
        access_token_ttl=_int(values, "access_token_ttl", base.access_token_ttl, ACCESS_TTL),
        refresh_token_ttl=_int(values, "refresh_token_ttl", base.refresh_token_ttl, REFRESH_TTL),
        id_token_ttl=_int(values, "id_token_ttl", base.id_token_ttl, ID_TTL),
        enabled=_bool(values, "enabled", base.enabled),
    )


def settings_of(client: OidcClient) -> ClientSettings:
    return ClientSettings(
        name=client.name,
        client_type=client.client_type,
        auth_method=client.auth_method,
        redirect_uris=tuple(client.redirect_uris or ()),
        post_logout_redirect_uris=tuple(client.post_logout_redirect_uris or ()),
        backchannel_logout_uri=client.backchannel_logout_uri,
        jwks_uri=client.jwks_uri,
        grant_types=tuple(client.grant_types or ()),
        scopes=tuple(client.scopes or ()),
        audiences=tuple(client.audiences or ()),
        require_pkce=client.require_pkce,
        first_party=client.first_party,
        id_token_alg=client.id_token_alg,
        access_token_ttl=client.access_token_ttl,
        refresh_token_ttl=client.refresh_token_ttl,
        id_token_ttl=client.id_token_ttl,
        enabled=client.enabled,
    )


def _store(client: OidcClient, values: ClientSettings) -> None:
    for name in FIELDS:
        value = getattr(values, name)
        setattr(client, name, list(value) if isinstance(value, tuple) else value)


# --- queries -------------------------------------------------------------------------------------------------


def list_clients(db: Session) -> list[OidcClient]:
    return list(db.scalars(select(OidcClient).order_by(OidcClient.name, OidcClient.id)))


def find_client(db: Session, client_id: str) -> OidcClient | None:
    return db.scalars(select(OidcClient).where(OidcClient.client_id == client_id)).first()


def get_client(db: Session, ref: str) -> OidcClient:
    """By client id, or by exact name (what the CLI accepts)."""
    ref = ref.strip()
    client = find_client(db, ref) or db.scalars(select(OidcClient).where(OidcClient.name == ref)).first()
    if client is None:
        raise AppError(
            "not_found",
            N_("There is no client with id or name %(ref)s.", ref=repr(ref)),
            N_("List them: `ami-auth oidc clients list`."),
        )
    return client


# --- what caches of client rows compare against --------------------------------------------------------------

# Bumped whenever a flush in this process changes or deletes a client, and again when that transaction ends: a
# per-process cache of client rows (app.idp.server) re-reads a row cached under an older generation. Every change to a
# client goes through the ORM objects of this module and app.idp.clients_apply; another process's change reaches
# such a cache when its entry expires.
_generations = itertools.count(1)
_generation = 0
_CHANGED: Final = "ami_oidc_clients_changed"


def generation() -> int:
    return _generation


def _bump() -> None:
    global _generation
    _generation = next(_generations)  # itertools.count is atomic under the GIL: no lock needed


@event.listens_for(Session, "after_flush")
def _note_client_changes(session: Session, _flush: UOWTransaction) -> None:
    if any(isinstance(obj, OidcClient) for obj in (*session.dirty, *session.deleted)):
        session.info[_CHANGED] = True
        _bump()


@event.listens_for(Session, "after_commit")
@event.listens_for(Session, "after_soft_rollback")
def _end_client_changes(session: Session, *_args: Any) -> None:
    # Again at the end: a row read (and cached) between the flush and the commit held the old values.
    if session.info.pop(_CHANGED, False):
        _bump()


# --- changes -------------------------------------------------------------------------------------------------


def create_client(
    db: Session,
    ctx: AuditContext,
    values: Mapping[str, Any],
    *,
    production: bool = False,
    created_by: int | None = None,
) -> Saved:
    cleaned = clean(values, production=production)
    secret = new_secret() if cleaned.auth_method in SECRET_METHODS else None
    client = OidcClient(client_id=new_client_id(), created_by=created_by)
    _store(client, cleaned)
    client.secret_hash = hash_secret(secret) if secret else None
    db.add(client)
    db.flush()
    audit.record(
        db,
        ctx,
        "oidc.client.create",
        target=f"oidc_client:{client.client_id}",
        details={
            "name": client.name,
            "client_type": client.client_type,
            "auth_method": client.auth_method,
            "grant_types": list(client.grant_types),
            "first_party": client.first_party,
        },
    )
    return Saved(client, Changes(fields=list(FIELDS), created=True), secret)


def update_client(
    db: Session, ctx: AuditContext, client: OidcClient, values: Mapping[str, Any], *, production: bool = False
) -> Saved:
    """Change settings; a switch to a secret-based method makes (and returns) a new secret, and a switch away from
    one drops the stored hash."""
    before = settings_of(client)
    after = clean(values, before, production=production)
    changed = [name for name in FIELDS if getattr(before, name) != getattr(after, name)]
    secret: str | None = None
    if after.auth_method in SECRET_METHODS and not client.secret_hash:
        secret = new_secret()
    _store(client, after)
    if secret is not None:
        client.secret_hash = hash_secret(secret)
    elif after.auth_method not in SECRET_METHODS:
        client.secret_hash = None
    changes = Changes(fields=changed, secret_rotated=secret is not None)
    if changes:
        audit.record(
            db,
            ctx,
            "oidc.client.update",
            target=f"oidc_client:{client.client_id}",
            details={"fields": changed, "secret_rotated": changes.secret_rotated},
        )
    return Saved(client, changes, secret)


def rotate_secret(db: Session, ctx: AuditContext, client: OidcClient) -> Saved:
    if client.auth_method not in SECRET_METHODS:
        raise _fail(
            "auth_method",
            N_("This client authenticates with %(method)s: it has no secret.", method=client.auth_method),
        )
    secret = new_secret()
    client.secret_hash = hash_secret(secret)
    audit.record(db, ctx, "oidc.client.secret_rotate", target=f"oidc_client:{client.client_id}")
    return Saved(client, Changes(secret_rotated=True), secret)


def delete_client(db: Session, ctx: AuditContext, client: OidcClient) -> None:
    """Delete a client with its codes, tokens, consents and pending logouts (the database cascades)."""
    audit.record(db, ctx, "oidc.client.delete", target=f"oidc_client:{client.client_id}", details={"name": client.name})
    db.delete(client)
    db.flush()
