"""The OpenID Provider's HTTP face: discovery, JWKS, the authorization endpoint and its pages (sign-in hand-off,
re-authentication, second factor, consent), token, userinfo, revocation, introspection and RP-initiated logout.

The protocol is Authlib's (:mod:`app.idp.server`); this module decides who the user is and what they agreed to,
and owns the transaction. An authorization request without a session goes through the existing sign-in pages
(password, MFA, passkeys, upstream sign-in, throttling) and comes back to ``/oauth2/authorize/resume`` with the
request's parameters in a signed, short-lived token (the sign-in pages start a fresh Flask session, so nothing can
wait in it). A re-authentication (``prompt=login``, an elapsed ``max_age``) is a fresh sign-in: the browser's
session is left only after the user confirms it (a third-party page cannot sign anyone out with a link), and when
the same person signs in again, the clients of the old session move to the new one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, cast
from urllib.parse import parse_qs, urlsplit

from authlib.common.urls import add_params_to_uri
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import AccessDeniedError, InvalidRequestError, scope_to_list
from authlib.oidc.core.errors import ConsentRequiredError, InteractionRequiredError, LoginRequiredError
from flask import Blueprint, Flask, current_app, g, jsonify, redirect, render_template, request, session, url_for
from flask_login import logout_user
from flask_wtf import FlaskForm
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import select
from werkzeug.wrappers import Response
from wtforms import HiddenField

from app import audit
from app.auth import sessions
from app.auth.throttle import ip_bucket
from app.errors import N_, AppError, translated
from app.extensions import csrf, db_session, get_cipher, get_database, get_limit_storage, get_settings
from app.http.context import SignedIn, audit_ctx, client_ip, signed_in
from app.idp import client_throttle, consents, tokens
from app.idp.claims import SCOPE_DESCRIPTIONS, Subject, acr, amr, sid_for, wants_mfa
from app.idp.delivery import init_delivery
from app.idp.keys import KeyRing
from app.idp.server import KEEP_ON_ERROR, Client, Provider, Wiring
from app.models import UserSession, utcnow
from app.net import get_client

bp = Blueprint("idp", __name__)

_EXTENSION_KEY: Final = "ami_idp"
RESUME_SALT: Final = "ami-auth/idp/resume"
# How long a user may take on the sign-in pages before coming back to finish the request.
RESUME_SECONDS: Final = 3600
# Discovery and JWKS: relying parties may cache them this long; a rotated-in key was published as "next" earlier.
METADATA_MAX_AGE: Final = 300
SIGN_OUT_REFUSED: Final = N_("This sign-out request cannot be used")


def init_app(app: Flask) -> Provider:
    settings = get_settings(app)
    keyring = KeyRing(get_database(app).engine, get_cipher(app))
    wiring = Wiring(
        db=db_session,
        ctx=audit_ctx,
        limit_storage=get_limit_storage,
        http=lambda: get_client(app),
    )
    provider = Provider(app, settings.base_url, keyring, wiring)
    app.extensions[_EXTENSION_KEY] = provider
    init_delivery(app, keyring, settings.base_url)
    return provider


def provider(app: Flask | None = None) -> Provider:
    found: Provider = (app or current_app).extensions[_EXTENSION_KEY]
    return found


# --- discovery and keys --------------------------------------------------------------------------------------------


def _public_json(body: dict[str, Any]) -> Response:
    response = jsonify(body)
    # Public documents: cacheable, and readable by browser-based apps of any origin.
    response.headers["Cache-Control"] = f"public, max-age={METADATA_MAX_AGE}"
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.add_etag()
    return response.make_conditional(request)


@bp.get("/.well-known/openid-configuration")
@bp.get("/.well-known/oauth-authorization-server")
def discovery() -> Response:
    return _public_json(provider().metadata())


@bp.get("/oauth2/jwks")
def jwks() -> Response:
    return _public_json(provider().keyring.public_jwks())


# --- the authorization endpoint --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resume:
    """An authorization request carried across the sign-in pages (signed with the app's secret key)."""

    params: dict[str, str]
    # Sign-in must be no older than this (epoch seconds): set when the request sent the user to sign in.
    after: float | None = None
    # The public id of the session the browser left to sign in again (its clients move to the new one).
    previous: str | None = None

    def dump(self) -> str:
        token: str = _serializer().dumps({"p": self.params, "a": self.after, "s": self.previous})
        return token

    @property
    def after_at(self) -> datetime | None:
        return datetime.fromtimestamp(self.after, UTC) if self.after is not None else None


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key or "", salt=RESUME_SALT)


def _load_resume(raw: str | None) -> Resume:
    expired = AppError(
        "token_expired",
        N_("This sign-in request has expired."),
        N_("Go back to the app and start signing in again."),
        status=400,
    )
    if not raw or len(raw) > 8000:
        raise expired
    try:
        data = _serializer().loads(raw, max_age=RESUME_SECONDS)
    except BadSignature:
        raise expired from None
    params = data.get("p") if isinstance(data, dict) else None
    if not isinstance(params, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in params.items()):
        raise expired
    after, previous = data.get("a"), data.get("s")
    return Resume(
        params,
        float(after) if isinstance(after, int | float) else None,
        previous if isinstance(previous, str) else None,
    )


class DecisionForm(FlaskForm):  # type: ignore[misc]
    r = HiddenField()


def _subject(who: SignedIn) -> Subject:
    record = who.record
    verified = who.live.mfa_verified
    return Subject(
        user=who.user,
        session_id=record.id,
        sid=sid_for(record.id),
        auth_time=record.created_at,
        amr=amr(record.auth_methods or (), verified),
        acr=acr(verified),
    )


def _max_age(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 9:
        raise InvalidRequestError("Invalid 'max_age': a number of seconds.")
    return int(raw)


def _to_client(response: Response) -> Response:
    """Send the browser to the app. After one of our forms (sign-in, second factor, consent) the redirect would be
    part of that form's submission, and CSP ``form-action 'self'`` blocks a submission that ends on another origin:
    then a page of ours continues the navigation instead (Sec-Fetch-Site says where it started)."""
    location = response.headers.get("Location")
    if location is None or (request.method == "GET" and request.headers.get("Sec-Fetch-Site") != "same-origin"):
        return response
    html = render_template("idp/continue.html", location=location)
    page = Response(html, status=200, mimetype="text/html")
    page.headers["Cache-Control"] = "no-store"
    return page


def _error_response(error: OAuth2Error) -> Response:
    """An error the app must hear (redirect with ``error``, ``state`` and RFC 9207 ``iss``), or — before the client
    and its redirect URI are known to be genuine — a page for the user (RFC 6749 §4.1.2.1: never redirect then)."""
    if error.redirect_uri:
        _status, _body, headers = error()
        response = Response("", status=302, headers=headers)
        location = response.headers["Location"]
        response.headers["Location"] = _with_iss(location)
        return _to_client(response)
    message = error.description or N_("The app sent an authorization request this server cannot accept.")
    return _request_error(error.error, message)


def _with_iss(location: str) -> str:
    # RFC 9207 §2: error responses carry the issuer too (Authlib's extension adds it to successful ones).
    return cast(str, add_params_to_uri(location, {"iss": provider().issuer}))


def _request_error(
    code: str, description: str, status: int = 400, title: str = N_("This sign-in request cannot be used")
) -> Response:
    # The protocol library's own descriptions stay as it wrote them (English); ours are read in the user's language.
    html = render_template("idp/error.html", code=code, description=translated(description), title=translated(title))
    return Response(html, status=status, mimetype="text/html")


def _sign_in(resume: Resume, login_hint: str | None) -> Response:
    target = url_for("idp.resume", r=resume.dump())
    hint = login_hint[:320] if login_hint else None
    return redirect(url_for("auth.signin", next=target, login_hint=hint))


def _adopt_previous(previous: str | None, who: SignedIn) -> None:
    """After a fresh sign-in asked for by an app: the session the browser left ends. If the same person signed in,
    its clients carry over to the new session (they are not logged out); if someone else did, it ends as usual."""
    if not previous or previous == who.live.public_id:
        return
    db = db_session()
    old = db.scalars(
        select(UserSession).where(UserSession.public_id == previous, UserSession.revoked_at.is_(None))
    ).first()
    if old is None or old.id == who.live.id:
        return
    if old.user_id == who.live.user.id:
        tokens.move_session(db, old.id, who.live.id)
        old.revoked_at = utcnow()
        reason = "signed in again"
    else:
        sessions.revoke_session(db, old, reason="another account signed in")
        reason = "another account signed in"
    audit.record(db, audit_ctx(), "session.revoke", target=f"user:{old.user_id}", details={"reason": reason})


def _authorize(params: dict[str, str] | None, resumed: Resume | None, decision: str | None = None) -> Response:
    server = provider()
    db = db_session()
    who = signed_in()
    subject = _subject(who) if who is not None else None
    try:
        grant = server.get_consent_grant(params, end_user=subject)
    except OAuth2Error as error:
        db.rollback()
        return _error_response(error)
    req = grant.request
    data = req.payload.data
    client: Client = req.client
    redirect_uri: str = grant.redirect_uri
    state = data.get("state")
    raw = dict(params) if params is not None else request.values.to_dict()
    prompts = set((data.get("prompt") or "").split())
    try:
        return _decide(grant, who, subject, client, raw, prompts, resumed, decision)
    except OAuth2Error as error:
        db.rollback()
        error.redirect_uri = redirect_uri
        error.state = state
        return _error_response(error)


def _decide(
    grant: Any,
    who: SignedIn | None,
    subject: Subject | None,
    client: Client,
    raw: dict[str, str],
    prompts: set[str],
    resumed: Resume | None,
    decision: str | None,
) -> Response:
    data = grant.request.payload.data
    max_age = _max_age(data.get("max_age"))
    after = resumed.after_at if resumed is not None else None
    if decision == "deny":
        # "Deny" on the consent page, or "Cancel" on the re-authentication and second-factor pages.
        if who is not None:
            details = {"client": client.client_id}
            db = db_session()
            audit.record(db, audit_ctx(), "oidc.grant.deny", target=f"user:{who.live.user.id}", details=details)
            db.commit()
        raise AccessDeniedError("The user did not allow the app.")
    if who is None or subject is None:
        if "none" in prompts:
            raise LoginRequiredError()
        return _sign_in(Resume(raw, time.time()), data.get("login_hint"))
    created = who.record.created_at
    fresh = after is not None and created >= after
    stale = max_age is not None and (utcnow() - created).total_seconds() > max_age
    if not fresh and (
        "login" in prompts
        or stale
        or (wants_mfa(data.get("acr_values")) and who.mfa.has_factor and not who.live.mfa_verified)
    ):
        if "none" in prompts:
            raise LoginRequiredError()
        if decision == "reauthenticate":
            previous = who.live.public_id
            logout_user()
            session.clear()
            return _sign_in(Resume(raw, time.time(), previous), data.get("login_hint") or who.live.user.email)
        return _page("idp/reauthenticate.html", client, Resume(raw, None), stale=stale)
    if wants_mfa(data.get("acr_values")) and not who.live.mfa_verified:
        # The account has no second factor to step up with: the user adds one, then continues.
        if "none" in prompts:
            raise InteractionRequiredError("A second factor is required.")
        return _page("idp/second_factor.html", client, Resume(raw, resumed.after if resumed else None))
    if resumed is not None:
        _adopt_previous(resumed.previous, who)
    db = db_session()
    scopes = scope_to_list(grant.request.scope) or []
    if not client.row.first_party:
        asked = "consent" in prompts or not consents.covers(db, who.live.user.id, client.row, scopes)
        if asked and decision != "allow":
            if "none" in prompts:
                raise ConsentRequiredError()
            db.commit()  # a session adopted above
            return _page("idp/consent.html", client, Resume(raw, resumed.after if resumed else None), scopes=scopes)
    consents.grant(db, audit_ctx(), who.live.user.id, client.row, scopes)
    response = provider().create_authorization_response(grant.request, grant_user=subject, grant=grant)
    if response.status_code >= 400 or "error" in parse_qs(urlsplit(response.headers.get("Location") or "").query):
        db.rollback()
    else:
        db.commit()
    return _to_client(response)


def _page(template: str, client: Client, resume: Resume, **context: Any) -> Response:
    form = DecisionForm(formdata=None)
    form.r.data = resume.dump()
    html = render_template(
        template,
        client=client.row,
        form=form,
        resume=form.r.data,
        descriptions=SCOPE_DESCRIPTIONS,
        **context,
    )
    response = Response(html, status=200, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/oauth2/authorize", methods=["GET", "POST"])
def authorize() -> Response:
    # OpenID Connect Core §3.1.2.1: the authorization endpoint takes GET and POST (form-encoded parameters).
    return _authorize(None, None)


@bp.get("/oauth2/authorize/resume")
def resume() -> Response:
    resumed = _load_resume(request.args.get("r"))
    return _authorize(resumed.params, resumed)


@bp.post("/oauth2/authorize/decide")
def decide() -> Response:
    form = DecisionForm()
    resumed = _load_resume(form.r.data)
    decision = request.form.get("decision")
    if decision not in {"allow", "deny", "reauthenticate"}:
        raise AppError("validation_failed", fields={"decision": N_("Choose allow or deny.")})
    return _authorize(resumed.params, resumed, decision)


# --- token, userinfo, revocation, introspection ----------------------------------------------------------------


def _settle(response: Response) -> Response:
    """Commit what an endpoint did when it succeeded — or, when it failed on a reused code or refresh token, the
    revocation that reuse caused; otherwise nothing it wrote is kept."""
    db = db_session()
    if response.status_code < 400 or g.pop(KEEP_ON_ERROR, False):
        db.commit()
    else:
        db.rollback()
    return response


def _throttled(answer: Callable[[], Response]) -> Response:
    """Answer unless this client id and network failed client authentication too often (then 429 with Retry-After,
    nothing checked); count an ``invalid_client`` answer (RFC 6749 §5.2) as a failure."""
    storage, network = get_limit_storage(), ip_bucket(client_ip())
    client_key = client_throttle.claimed_client_id(request.headers.get("Authorization"), request.form)
    wait = client_throttle.wait_seconds(storage, client_key, network)
    if wait:
        return client_throttle.refusal(wait)
    answered = answer()
    if answered.status_code == 401 and b'"invalid_client"' in answered.get_data():
        client_throttle.record_failure(storage, client_key, network)
    return answered


@bp.post("/oauth2/token")
def token() -> Response:
    server = provider()
    server.keyring.warm()
    return _throttled(lambda: _settle(server.create_token_response()))


@bp.route("/oauth2/userinfo", methods=["GET", "POST"])
def userinfo() -> Response:
    response = provider().create_endpoint_response("userinfo")
    response.headers["Cache-Control"] = "no-store"
    return _settle(response)


@bp.post("/oauth2/revoke")
def revoke() -> Response:
    return _throttled(lambda: _settle(provider().create_endpoint_response("revocation")))


@bp.post("/oauth2/introspect")
def introspect() -> Response:
    def answer() -> Response:
        response = provider().create_endpoint_response("introspection")
        response.headers["Cache-Control"] = "no-store"
        return _settle(response)

    return _throttled(answer)


# --- RP-initiated logout -----------------------------------------------------------------------------------------


def _end_session() -> None:
    who = signed_in()
    if who is not None:
        db = db_session()
        sessions.revoke_session(db, who.record, reason="rp_logout")
        audit.record(db, audit_ctx(), "signout", target=f"user:{who.id}", details={"via": "rp_logout"})
        db.commit()
    logout_user()
    session.clear()


@bp.route("/oauth2/logout", methods=["GET", "POST"])
def end_session() -> Response:
    """OpenID Connect RP-Initiated Logout 1.0. Without an ``id_token_hint`` the user confirms first (§6: such
    requests could otherwise sign anyone out); a ``post_logout_redirect_uri`` must match one the client registered,
    exactly, or there is no redirect at all (§3)."""
    server = provider()
    try:
        req = server.validate_endpoint_request("end_session")
    except OAuth2Error as error:
        return _request_error(
            error.error, error.description or N_("The logout request is not valid."), title=SIGN_OUT_REFUSED
        )
    asked_uri = req.request.payload.data.get("post_logout_redirect_uri")
    if asked_uri and req.redirect_uri is None:
        return _request_error(
            "invalid_request",
            N_("The address to return to after signing out is not registered for this app, so you are not sent there."),
            title=SIGN_OUT_REFUSED,
        )
    who = signed_in()
    hinted = req.id_token_claims or {}
    if who is not None and (req.needs_confirmation or hinted.get("sub") != str(who.live.user.id)):
        form = DecisionForm(formdata=None)
        form.r.data = _serializer().dumps({"u": req.redirect_uri})
        html = render_template("idp/logout.html", client=req.client.row if req.client else None, form=form)
        return Response(html, status=200, mimetype="text/html")
    _end_session()
    if req.redirect_uri:
        return redirect(req.redirect_uri)
    return Response(render_template("idp/logged_out.html"), status=200, mimetype="text/html")


# Apps call these server to server, or send the browser from their own pages (authorization and logout requests
# may be form POSTs): there is no CSRF token of ours to send. Nothing here changes what the user allowed or ends a
# session without a page of ours (consent, re-authentication, logout confirmation), and those forms have one.
for _view in (authorize, token, userinfo, revoke, introspect, end_session):
    csrf.exempt(_view)


@bp.post("/oauth2/logout/confirm")
def confirm_logout() -> Response:
    form = DecisionForm()
    target: str | None = None
    try:
        data = _serializer().loads(form.r.data or "", max_age=RESUME_SECONDS)
        target = data.get("u") if isinstance(data, dict) and isinstance(data.get("u"), str) else None
    except BadSignature:
        target = None
    _end_session()
    if target:
        # Checked against the client's registered addresses when the page was shown (and signed since).
        return _to_client(redirect(target))
    return Response(render_template("idp/logged_out.html"), status=200, mimetype="text/html")
