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

CORS: responses under /api carry ``Access-Control-Allow-Origin`` only for an exact origin of
``AMI_AUTH_CMS_ORIGINS``, with credentials; preflights are answered from the route's methods.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from datetime import time as day_start
from email.utils import format_datetime
from functools import wraps
from typing import Any, Final, Literal, ParamSpec, TypeVar, cast

from flask import Blueprint, current_app, g, request
from flask.blueprints import BlueprintSetupState
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.storage import Storage
from limits.strategies import FixedWindowRateLimiter
from werkzeug.wrappers import Response

from app import audit
from app.api import idempotency, tokens
from app.api.registry import AuthSpec, OperationDoc, operation_of, set_auth
from app.api.tokens import SCOPES, PresentedToken, Scope
from app.auth.throttle import ip_bucket
from app.errors import AppError
from app.extensions import csrf, db_session, get_settings
from app.http.context import SignedIn, audit_ctx, client_ip, signed_in, user_agent
from app.http.csrf import header_token, log_refusal, origin_refusal, token_refusal, trusted_origins
from app.models import User
from app.settings import Settings

P = ParamSpec("P")
R = TypeVar("R")

API_PREFIX: Final = "/api"
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
ALLOWED_REQUEST_HEADERS: Final = "Authorization, Content-Type, Idempotency-Key, X-CSRFToken, X-CSRF-Token"
# What a CMS page may read of an answer besides the CORS-safelisted headers.
EXPOSED_HEADERS: Final = (
    "Retry-After, RateLimit, RateLimit-Policy, Location, Idempotent-Replayed, Deprecation, Sunset, Link, "
    "WWW-Authenticate, X-Request-ID"
)
REALM: Final = "AMI Auth"
PREFLIGHT_MAX_AGE: Final = "600"

# What a session cookie may do, by role. Members get the session scopes for their own sessions only.
ROLE_SCOPES: Final[dict[str, frozenset[str]]] = {
    "admin": frozenset(SCOPES),
    "member": frozenset({"sessions:read", "sessions:write"}),
}

_NS: Final = "ami-api"
# A refused request is audited at most once a minute per bucket, so a flood cannot flood the audit chain.
_REFUSAL_AUDIT: Final = RateLimitItemPerMinute(1, namespace=f"{_NS}-429-audit")

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


@dataclass(frozen=True)
class _RateState:
    """Where the caller stands against the limit this request was counted under (for the RateLimit headers)."""

    policy: str
    quota: int
    window: int
    remaining: int
    reset: int


def _challenge(error: str | None = None, description: str | None = None, scope: str | None = None) -> str:
    """An RFC 6750 section 3 challenge. No ``error`` when the request carried no bearer token at all."""
    parts = [f'realm="{REALM}"']
    if error is not None:
        parts.append(f'error="{error}"')
    if description is not None:
        # A quoted-string of %x20-21 / %x23-5B / %x5D-7E (RFC 6750 section 3): no quote or backslash.
        text = "".join(c for c in description if " " <= c <= "~" and c not in '"\\')
        parts.append(f'error_description="{text}"')
    if scope is not None:
        parts.append(f'scope="{scope}"')
    return "Bearer " + ", ".join(parts)


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
        _limit_ip(get_settings())
        check_query(operation_of(wrapper))
        return view(*args, **kwargs)

    set_auth(wrapper, AuthSpec(public=True))
    return wrapper


def api_blueprint(name: str, import_name: str) -> Blueprint:
    """A blueprint under /api: CSRF handled by :func:`api_auth` (not the form check), CORS installed."""
    bp = Blueprint(name, import_name, url_prefix=API_PREFIX)
    csrf.exempt(bp)
    bp.record_once(_install)
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
        _limit(settings, _principal_item(settings), "user", str(who.id), target=f"user:{who.id}")
        _refuse_kind(
            audit_ctx(),
            f"user:{who.id}",
            "This endpoint answers to service tokens only, never to a browser session.",
            "Call it from the CMS server with a service token that has the scope it needs.",
        )
    _limit_ip(settings)
    g.api_challenge = _challenge()
    if not spec.cookies:
        raise AppError("not_authenticated", "A service token is required.", _TOKEN_PROBLEMS["unknown"][1])
    raise AppError("not_authenticated")


def _refuse_kind(ctx: audit.AuditContext, target: str, message: str, hint: str) -> None:
    db = db_session()
    audit.record(
        db, ctx, "api.denied", target=target, outcome="denied", details=_request_details(reason="wrong_credential")
    )
    db.commit()
    raise AppError("permission_denied", message, hint)


def _token_ctx(record: PresentedToken | None) -> audit.AuditContext:
    actor = f"service_token:{record.id}" if record is not None else "service_token:unknown"
    return audit.AuditContext(actor=actor, ip=client_ip(), user_agent=user_agent())


def _request_details(**extra: object) -> dict[str, object]:
    rule = request.url_rule.rule if request.url_rule is not None else request.path
    return {"method": request.method, "path": rule[:200], **extra}


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
        _limit_ip(settings, target=target, ctx=_token_ctx(record))
        audit.record(
            db,
            _token_ctx(record),
            "service_token.use",
            target=target,
            outcome="denied",
            details=_request_details(reason=problem),
        )
        db.commit()
        message, hint = _TOKEN_PROBLEMS[problem]
        # RFC 6750 section 3.1: no error code when the request used another scheme (no bearer token at all).
        g.api_challenge = _challenge("invalid_token", message) if bearer else _challenge()
        raise AppError("not_authenticated", message, hint)

    _limit(settings, _principal_item(settings), "token", str(record.id), target=target, ctx=_token_ctx(record))
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
            details=_request_details(reason="missing_scope", missing_scopes=missing),
        )
        db.commit()
        g.api_challenge = _challenge("insufficient_scope", scope=" ".join(missing))
        raise AppError(
            "permission_denied",
            f"This service token lacks the scope {_names(missing, spec)}.",
            f"Create a token with {_names(missing, spec)} under Service tokens in the console and use it instead.",
        )
    tokens.touch(db, record)
    if spec.audit_use:
        audit.record(db, _token_ctx(record), "service_token.use", target=target, details=_request_details())
        db.commit()
    # else the view's own event (and commit) records this use, last_used_at included.
    return Principal("token", frozenset(record.scopes), token=record)


def _session_principal(settings: Settings, spec: AuthSpec, who: SignedIn) -> Principal:
    user = who.live.user
    target = f"user:{user.id}"
    _limit(settings, _principal_item(settings), "user", str(user.id), target=target)
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
            details=_request_details(reason="missing_scope", missing_scopes=missing),
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
        details=_request_details(reason="missing_scope", missing_scopes=[scope], **details),
    )
    db.commit()
    if caller.token is not None:
        g.api_challenge = _challenge("insufficient_scope", scope=scope)
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
        db, audit_ctx(), "api.csrf_failed", target=target, outcome="denied", details=_request_details(reason=problem)
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


# --- rate limits ----------------------------------------------------------------------------------


def _storage() -> Storage:
    storage: Storage = current_app.extensions["ami_limits"]
    return storage


def _principal_item(settings: Settings) -> RateLimitItem:
    return RateLimitItemPerMinute(settings.api_rate_per_minute, namespace=_NS)


def _ip_item(settings: Settings) -> RateLimitItem:
    return RateLimitItemPerMinute(settings.api_ip_rate_per_minute, namespace=f"{_NS}-ip")


def _limit_ip(settings: Settings, *, target: str | None = None, ctx: audit.AuditContext | None = None) -> None:
    bucket = ip_bucket(client_ip())
    _limit(settings, _ip_item(settings), "ip", bucket, target=target or f"ip:{bucket}", ctx=ctx)


def _limit(
    settings: Settings,
    item: RateLimitItem,
    kind: str,
    identifier: str,
    *,
    target: str,
    ctx: audit.AuditContext | None = None,
) -> None:
    """Count one request; over the limit raise 429 with Retry-After (audited once a minute per bucket)."""
    limiter = FixedWindowRateLimiter(_storage())
    allowed = limiter.hit(item, kind, identifier)
    stats = limiter.get_window_stats(item, kind, identifier)
    until_reset = max(1, math.ceil(stats.reset_time - time.time()))
    g.api_rate = _RateState(kind, item.amount, item.get_expiry(), max(0, stats.remaining), until_reset)
    if allowed:
        return
    retry_after = until_reset
    if limiter.hit(_REFUSAL_AUDIT, kind, identifier):
        db = db_session()
        audit.record(
            db,
            ctx or audit_ctx(),
            "api.rate_limited",
            target=target,
            outcome="denied",
            details=_request_details(limit=item.amount, per="minute", bucket=kind),
        )
        db.commit()
    raise AppError(
        "rate_limited",
        "Too many API requests.",
        f"Wait {retry_after} second{'s' if retry_after != 1 else ''} and try again.",
        retry_after=retry_after,
    )


# --- CORS -----------------------------------------------------------------------------------------


def _install(state: BlueprintSetupState) -> None:
    """Install the /api response hook once per app, however many API blueprints are registered."""
    app = state.app
    if app.extensions.get("ami_api_hooks"):
        return
    app.extensions["ami_api_hooks"] = True
    settings: Settings = app.extensions["ami_settings"]
    allowed = frozenset(settings.cms_origins)

    @app.after_request
    def _api_headers(response: Response) -> Response:
        if not request.path.startswith(API_PREFIX + "/"):
            return response
        _rate_headers(response)
        if response.status_code == 401 and "WWW-Authenticate" not in response.headers:
            # RFC 9110 section 11.6.1: every 401 carries a challenge.
            response.headers["WWW-Authenticate"] = g.get("api_challenge") or _challenge()
        elif response.status_code == 403 and g.get("api_challenge"):
            response.headers["WWW-Authenticate"] = g.api_challenge
        _deprecation_headers(response)
        return _cors(response)

    def _cors(response: Response) -> Response:
        # The answer depends on Origin, so caches must key on it (Fetch standard, CORS protocol).
        if "Vary" in response.headers:
            response.vary.add("Origin")
        else:  # the usual case, without parsing and re-serialising the header
            response.headers["Vary"] = "Origin"
        origin = request.headers.get("Origin")
        if origin is None or origin not in allowed:
            return response
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            methods = sorted(response.allow - {"HEAD"}) if response.allow else ["GET"]
            response.headers["Access-Control-Allow-Methods"] = ", ".join(methods)
            response.headers["Access-Control-Allow-Headers"] = ALLOWED_REQUEST_HEADERS
            response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
        return response


def _rate_headers(response: Response) -> None:
    """draft-ietf-httpapi-ratelimit-headers-10: the policy this request was counted under and what is left."""
    state = g.get("api_rate")
    if not isinstance(state, _RateState):
        return
    response.headers["RateLimit-Policy"] = f'"{state.policy}";q={state.quota};w={state.window}'
    response.headers["RateLimit"] = f'"{state.policy}";r={state.remaining};t={state.reset}'


def _deprecation_headers(response: Response) -> None:
    """A deprecated operation says so on every answer (docs/api.md, "Versioning and deprecation")."""
    rule = request.url_rule
    view = current_app.view_functions.get(rule.endpoint) if rule is not None else None
    doc = operation_of(view)
    if doc is None or doc.deprecation is None:
        return
    info = doc.deprecation
    since = datetime.combine(info.since, day_start(0), tzinfo=UTC)
    sunset = datetime.combine(info.sunset, day_start(0), tzinfo=UTC)
    response.headers["Deprecation"] = f"@{int(since.timestamp())}"  # RFC 9745: a structured-field date
    response.headers["Sunset"] = format_datetime(sunset, usegmt=True)  # RFC 8594: an HTTP-date
    response.headers["Link"] = f'<{info.successor}>; rel="successor-version"'
