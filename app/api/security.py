"""Authentication, scopes, CSRF, CORS and rate limits for every JSON endpoint under /api.

A JSON endpoint is guarded by one decorator, under its route::

    bp = api_blueprint("api_accounts", __name__)

    @bp.get("/account-manager/accounts")
    @api_auth("accounts:read")
    @document(...)
    def list_accounts() -> Response:
        who = principal()            # the token or the signed-in user, with its scopes
        ...

Two ways in:

* ``Authorization: Bearer amis_…`` — a service token (the CMS server). It must exist, not be revoked
  or expired (else 401 ``not_authenticated`` with ``WWW-Authenticate: Bearer …, error="invalid_token"``,
  RFC 6750 section 3.1) and hold every scope the endpoint names (else 403 ``permission_denied`` naming
  the scope, ``error="insufficient_scope"``). Every attempt is audited as ``service_token.use`` with the
  token's id (``service_token:unknown`` when nothing matched); the token itself is never recorded.
  Token calls need no CSRF token: a browser never attaches an Authorization header on its own.
* The user's session cookie (browser calls from the CMS origin). Scopes come from the role
  (:data:`ROLE_SCOPES`); a member acts on their own data only (:meth:`Principal.may_act_for`).
  State-changing methods need the ``X-CSRFToken`` header (the ``csrf_token`` of
  ``GET /api/auth/session``) and an allowed ``Origin``.

401 means only "no valid credential". A valid credential of the wrong kind is 403 ``permission_denied``: a
service token on a cookie-only endpoint (``GET /api/auth/session``), a session cookie on a token-only one
(the headers endpoint). Every 401 carries ``WWW-Authenticate``. The query parameters an endpoint documents
are the only ones it takes: an unknown or repeated one is 422 ``validation_failed`` naming it.

Rate limits use the shared ``limits`` storage: ``AMI_AUTH_API_RATE_PER_MINUTE`` per token (or per
signed-in user), ``AMI_AUTH_API_IP_RATE_PER_MINUTE`` per client IP for requests without a valid
credential. Over a limit: 429 ``rate_limited`` with ``Retry-After``. Every response says where the caller
stands: ``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers-10).

Rate limits live in :mod:`app.api.ratelimit`; the headers every answer carries (CORS, challenge, deprecation)
in :mod:`app.api.answer_headers`.

CORS: responses under /api carry ``Access-Control-Allow-Origin`` only for an exact origin of
``AMI_AUTH_CMS_ORIGINS``, with credentials; preflights are answered from the route's methods.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import wraps
from typing import Any, Final, Literal, ParamSpec, TypeVar, cast

from flask import Blueprint, g, request
from werkzeug.wrappers import Response

from app import audit
from app.api import idempotency, tokens
from app.api.answer_headers import API_PREFIX, challenge, install
from app.api.ratelimit import limit, limit_ip, principal_item, request_details
from app.api.registry import AuthSpec, OperationDoc, operation_of, set_auth
from app.api.tokens import SCOPES, PresentedToken, Scope
from app.errors import AppError
from app.extensions import csrf, db_session, get_settings
from app.http.context import SignedIn, audit_ctx, client_ip, signed_in, user_agent
from app.http.csrf import header_token, log_refusal, origin_refusal, token_refusal, trusted_origins
from app.models import User
from app.settings import Settings

P = ParamSpec("P")
R = TypeVar("R")

SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
# What a session cookie may do, by role. Members get the session scopes for their own sessions only.
ROLE_SCOPES: Final[dict[str, frozenset[str]]] = {
    "admin": frozenset(SCOPES),
    "member": frozenset({"sessions:read", "sessions:write"}),
}

_TOKEN_PROBLEMS: Final[dict[str, tuple[str, str]]] = {
    "unknown": (
        "The service token was not recognised.",
        "Send 'Authorization: Bearer amis_…' with a token an administrator created under Service tokens.",
    ),
    "revoked": ("The service token has been revoked.", "Ask an administrator for a new token."),
    "expired": ("The service token has expired.", "Ask an administrator for a new token."),
}


@dataclass(frozen=True)
class Principal:
    """Who is calling: a service token or a signed-in user, and the scopes they hold."""

    kind: Literal["token", "session"]
    scopes: frozenset[str]
    token: PresentedToken | None = None
    session: SignedIn | None = None

    @property
    def user(self) -> User | None:
        """The signed-in user's ORM row (loaded on first use); ``None`` for a token."""
        return self.session.user if self.session is not None else None

    @property
    def user_id(self) -> int | None:
        return self.session.id if self.session is not None else None

    @property
    def acts_for_everyone(self) -> bool:
        """Tokens and admins act on any user's data; members only on their own."""
        return self.kind == "token" or (self.session is not None and self.session.is_admin)

    def may_act_for(self, user_id: int) -> bool:
        return self.acts_for_everyone or (self.user_id is not None and self.user_id == user_id)

    def has(self, scope: Scope) -> bool:
        return scope in self.scopes


def principal() -> Principal:
    """The caller of the current request (only inside a view guarded by :func:`api_auth`)."""
    value = g.get("api_principal")
    if not isinstance(value, Principal):
        raise RuntimeError("principal() called outside an endpoint guarded by api_auth")
    return value


def api_audit_ctx() -> audit.AuditContext:
    """The audit actor for the current API request: the token (by id) or the signed-in user."""
    value = g.get("api_principal")
    if isinstance(value, Principal) and value.token is not None:
        return _token_ctx(value.token)
    return audit_ctx()


def json_response(body: Any, status: int = 200, *, location: str | None = None) -> Response:
    """A JSON answer; ``location`` (a path under /api) for a 201 Created (RFC 9110 section 10.2.2)."""
    response = Response(json.dumps(body, separators=(",", ":")), status=status, mimetype="application/json")
    if location is not None:
        response.headers["Location"] = location
    return response


def check_query(doc: OperationDoc | None) -> None:
    """Refuse query parameters the endpoint does not document, and repeats of one, each on its name (422)."""
    allowed = {param.name for param in doc.query} if doc is not None else set()
    errors: dict[str, str] = {}
    for name in request.args:
        if name not in allowed:
            hint = f" Use {', '.join(sorted(allowed))}." if allowed else ""
            errors[name[:80]] = "This is not a parameter of this request." + hint
        elif len(request.args.getlist(name)) > 1:
            errors[name] = "Give this parameter once."
    if errors:
        raise AppError(
            "validation_failed", "The query string has parameters this endpoint does not take.", fields=errors
        )


# --- the decorators -----------------------------------------------------------------------------------


def api_auth(
    *scopes: Scope,
    any_of: tuple[Scope, ...] = (),
    tokens: bool = True,
    cookies: bool = True,
    audit_use: bool = True,
    free_query: bool = False,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Guard a JSON endpoint: a service token with every scope in ``scopes``, or a session whose role has them.

    The scopes are checked here, before the view runs, so a caller without them never learns anything from
    the request body's validation. An endpoint whose body picks the exact scope (a dialog's ``kind``) names
    the candidates in ``any_of``: the caller must hold one of them to get in, and the view narrows it with
    :func:`require_scope` right after reading the field that picks it. Every endpoint a token can call
    names its scopes (a ``ValueError`` at import otherwise), so no route can skip this check.

    ``tokens=False`` makes an endpoint answer to the session cookie only (``GET /api/auth/session``
    describes the browser's own session); ``cookies=False`` to service tokens only. ``audit_use=False``:
    the view audits every call itself, in its own transaction, with :func:`api_audit_ctx` (the token is the
    actor), so a successful token use is not a second event; refusals are recorded either way.
    ``free_query``: the query string is not the endpoint's own (the proxy passes it on), so it is not checked.
    """
    unknown = [s for s in (*scopes, *any_of) if s not in SCOPES]
    if unknown:
        raise ValueError(f"unknown API scope(s) {unknown}; add them to app.api.tokens.SCOPES first")
    if tokens and not scopes and not any_of:
        raise ValueError("an endpoint service tokens can call must name its scopes (or any_of candidates)")
    spec = AuthSpec(scopes=tuple(scopes), any_of=tuple(any_of), tokens=tokens, cookies=cookies, audit_use=audit_use)

    def decorate(view: Callable[P, R]) -> Callable[P, R]:
        @wraps(view)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            caller = _authenticate(spec)
            g.api_principal = caller
            doc = operation_of(wrapper)
            if not free_query:
                check_query(doc)
            if doc is not None and doc.idempotent:
                key = idempotency.presented_key()
                if key is not None:
                    owner = f"service_token:{caller.token.id}" if caller.token is not None else f"user:{caller.user_id}"
                    run = cast(Callable[[], Response], lambda: view(*args, **kwargs))
                    return cast(R, idempotency.run(db_session(), owner, key, run))
            return view(*args, **kwargs)

        set_auth(wrapper, spec)
        return wrapper

    return decorate


def api_public(view: Callable[P, R]) -> Callable[P, R]:
    """An endpoint anyone may call (the OpenAPI document): counted against the per-IP limit only."""

    @wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        limit_ip(get_settings())
        check_query(operation_of(wrapper))
        return view(*args, **kwargs)

    set_auth(wrapper, AuthSpec(public=True))
    return wrapper


def api_blueprint(name: str, import_name: str) -> Blueprint:
    """A blueprint under /api: CSRF handled by :func:`api_auth` (not the form check), CORS installed."""
    bp = Blueprint(name, import_name, url_prefix=API_PREFIX)
    csrf.exempt(bp)
    bp.record_once(install)
    return bp


# --- authentication -------------------------------------------------------------------------------


def _authenticate(spec: AuthSpec) -> Principal:
    settings = get_settings()
    header = request.headers.get("Authorization")
    if header is not None and spec.tokens:
        return _token_principal(settings, spec, header)
    who = signed_in()
    if who is not None and spec.cookies:
        return _session_principal(settings, spec, who)
    if header is not None:
        # A cookie-only endpoint (the browser's own session): a valid token is the wrong kind of credential.
        record = _valid_token(settings, header)
        _refuse_kind(
            _token_ctx(record),
            f"service_token:{record.id}",
            "This endpoint describes a browser session; service tokens cannot call it.",
            "Call it from the browser with the user's session cookie (credentials: 'include').",
        )
    if who is not None:
        # A token-only endpoint (a credential is disclosed): a session cookie is the wrong kind.
        limit(settings, principal_item(settings), "user", str(who.id), target=f"user:{who.id}")
        _refuse_kind(
            audit_ctx(),
            f"user:{who.id}",
            "This endpoint answers to service tokens only, never to a browser session.",
            "Call it from the CMS server with a service token that has the scope it needs.",
        )
    limit_ip(settings)
    g.api_challenge = challenge()
    if not spec.cookies:
        raise AppError("not_authenticated", "A service token is required.", _TOKEN_PROBLEMS["unknown"][1])
    raise AppError("not_authenticated")


def _refuse_kind(ctx: audit.AuditContext, target: str, message: str, hint: str) -> None:
    db = db_session()
    audit.record(
        db, ctx, "api.denied", target=target, outcome="denied", details=request_details(reason="wrong_credential")
    )
    db.commit()
    raise AppError("permission_denied", message, hint)


def _token_ctx(record: PresentedToken | None) -> audit.AuditContext:
    actor = f"service_token:{record.id}" if record is not None else "service_token:unknown"
    return audit.AuditContext(actor=actor, ip=client_ip(), user_agent=user_agent())


def _valid_token(settings: Settings, header: str) -> PresentedToken:
    """The presented token's row, counted against its rate limit; else 401 (audited, with the challenge)."""
    db = db_session()
    scheme, _, raw = header.strip().partition(" ")
    raw = raw.strip()
    # RFC 6750 section 2.1: the scheme name is case-insensitive; anything but Bearer matches no token.
    bearer = scheme.lower() == "bearer"
    check = tokens.authenticate(db, raw if bearer else "")
    record = check.record
    target = f"service_token:{record.id}" if record is not None else "service_token:unknown"

    if not check.ok or record is None:
        problem = check.problem or "unknown"
        limit_ip(settings, target=target, ctx=_token_ctx(record))
        audit.record(
            db,
            _token_ctx(record),
            "service_token.use",
            target=target,
            outcome="denied",
            details=request_details(reason=problem),
        )
        db.commit()
        message, hint = _TOKEN_PROBLEMS[problem]
        # RFC 6750 section 3.1: no error code when the request used another scheme (no bearer token at all).
        g.api_challenge = challenge("invalid_token", message) if bearer else challenge()
        raise AppError("not_authenticated", message, hint)

    limit(settings, principal_item(settings), "token", str(record.id), target=target, ctx=_token_ctx(record))
    return record


def _token_principal(settings: Settings, spec: AuthSpec, header: str) -> Principal:
    db = db_session()
    record = _valid_token(settings, header)
    target = f"service_token:{record.id}"
    missing = _missing(spec, record.scopes)
    if missing:
        audit.record(
            db,
            _token_ctx(record),
            "service_token.use",
            target=target,
            outcome="denied",
            details=request_details(reason="missing_scope", missing_scopes=missing),
        )
        db.commit()
        g.api_challenge = challenge("insufficient_scope", scope=" ".join(missing))
        raise AppError(
            "permission_denied",
            f"This service token lacks the scope {_names(missing, spec)}.",
            f"Create a token with {_names(missing, spec)} under Service tokens in the console and use it instead.",
        )
    tokens.touch(db, record)
    if spec.audit_use:
        audit.record(db, _token_ctx(record), "service_token.use", target=target, details=request_details())
        db.commit()
    # else the view's own event (and commit) records this use, last_used_at included.
    return Principal("token", frozenset(record.scopes), token=record)


def _session_principal(settings: Settings, spec: AuthSpec, who: SignedIn) -> Principal:
    user = who.live.user
    target = f"user:{user.id}"
    limit(settings, principal_item(settings), "user", str(user.id), target=target)
    if request.method not in SAFE_METHODS:
        _check_csrf(settings, target)
    granted = ROLE_SCOPES.get(user.role, frozenset())
    missing = _missing(spec, granted)
    if missing:
        db = db_session()
        audit.record(
            db,
            audit_ctx(),
            "api.denied",
            target=target,
            outcome="denied",
            details=request_details(reason="missing_scope", missing_scopes=missing),
        )
        db.commit()
        raise AppError(
            "permission_denied",
            f"Your role ({user.role}) does not include the scope {_names(missing, spec)}.",
            "Ask an administrator, or call this endpoint from the CMS server with a service token.",
        )
    return Principal("session", granted, session=who)


def _missing(spec: AuthSpec, held: Collection[str]) -> list[str]:
    """The scopes a caller lacks: every one of ``spec.scopes`` not held, and the ``any_of`` candidates when it
    holds none of them."""
    missing = [s for s in spec.scopes if s not in held]
    if spec.any_of and not any(s in held for s in spec.any_of):
        missing.extend(spec.any_of)
    return missing


def _names(scopes: Sequence[str], spec: AuthSpec | None = None) -> str:
    quoted = [f"'{s}'" for s in scopes]
    if spec is not None and spec.any_of and all(s in scopes for s in spec.any_of):
        alternatives = [f"'{s}'" for s in spec.any_of]
        required = [q for q in quoted if q not in alternatives]
        one_of = " or ".join(alternatives)
        return ", ".join([*required, one_of]) if required else one_of
    return ", ".join(quoted)


def require_scope(scope: Scope, **details: object) -> None:
    """Narrow an ``any_of`` endpoint to the exact scope its body asks for (the caller holds one candidate, is
    this the one?). Refusals are audited (``api.denied``) like the guard's own."""
    caller = principal()
    if caller.has(scope):
        return
    db = db_session()
    audit.record(
        db,
        api_audit_ctx(),
        "api.denied",
        target=f"service_token:{caller.token.id}" if caller.token is not None else f"user:{caller.user_id}",
        outcome="denied",
        details=request_details(reason="missing_scope", missing_scopes=[scope], **details),
    )
    db.commit()
    if caller.token is not None:
        g.api_challenge = challenge("insufficient_scope", scope=scope)
        raise AppError(
            "permission_denied",
            f"This service token lacks the scope '{scope}'.",
            f"Use a service token with '{scope}' (console: Service tokens).",
        )
    raise AppError(
        "permission_denied",
        f"Your role does not include the scope '{scope}'.",
        "Ask an administrator, or call this endpoint from the CMS server with a service token.",
    )


# --- CSRF for cookie calls ----------------------------------------------------------------------------


def _check_csrf(settings: Settings, target: str) -> None:
    """CSRF check for a state-changing call with the session cookie: the rule of :mod:`app.http.csrf` (the
    ``X-CSRFToken`` header, and an Origin — or Referer — that is this site), with ``AMI_AUTH_CMS_ORIGINS``
    trusted too: the CMS calls from its own origin with CORS."""
    trusted = trusted_origins(settings, settings.cms_origins)
    problem = origin_refusal(trusted) or token_refusal(header_token())
    if problem is None:
        return
    log_refusal(problem)
    db = db_session()
    audit.record(
        db, audit_ctx(), "api.csrf_failed", target=target, outcome="denied", details=request_details(reason=problem)
    )
    db.commit()
    if problem in ("origin", "referrer", "no_origin"):
        raise AppError(
            "permission_denied",
            "The request came from an origin that is not allowed.",
            "Call the API from this site or from an origin listed in AMI_AUTH_CMS_ORIGINS.",
        )
    raise AppError(
        "permission_denied",
        "The request has no valid CSRF token.",
        "Send the X-CSRFToken header with the csrf_token from GET /api/auth/session.",
        # A client can tell this refusal from a missing scope, read a fresh token and send the request again.
        fields={"X-CSRFToken": "Missing, or not this session's: read csrf_token from GET /api/auth/session."},
    )
