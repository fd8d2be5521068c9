"""``/api/auth/*``: the browser's own session, and listing / revoking sign-in sessions."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Final

from flask import request, url_for
from flask_wtf.csrf import generate_csrf
from sqlalchemy import select
from werkzeug.wrappers import Response

from app import audit
from app.api import hooks
from app.api.registry import DATETIME, QueryParam, component, document, nullable
from app.api.security import Principal, api_audit_ctx, api_auth, api_blueprint, json_response, principal
from app.auth import sessions
from app.auth.sessions import SessionUser
from app.errors import AppError
from app.extensions import db_session, get_settings
from app.models import User, UserSession, utcnow
from app.models.base import ID_MAX
from app.settings import Settings

bp = api_blueprint("api_auth", __name__)

TAGS: Final = ("sessions",)
_USER_ID: Final = re.compile(r"[0-9]{1,10}")
_PUBLIC_ID: Final = re.compile(r"[0-9a-f]{16}")

USER = component(
    "User",
    {
        "type": "object",
        "required": ["id", "email", "name", "roles"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "integer"},
            "email": {"type": "string"},
            "name": {"type": "string"},
            "roles": {"type": "array", "items": {"type": "string", "enum": ["admin", "member"]}},
        },
    },
)
MFA = component(
    "MfaSummary",
    {
        "type": "object",
        "required": ["enrolled", "methods", "enrolment_required", "enrolment_url"],
        "additionalProperties": False,
        "properties": {
            "enrolled": {"type": "boolean"},
            "methods": {
                "type": "array",
                "items": {"type": "string", "enum": ["totp", "webauthn", "recovery_code"]},
                "description": "The ways the user can finish a sign-in.",
            },
            "enrolment_required": {
                "type": "boolean",
                "description": "The user's role requires a second factor and they have none yet: until they enrol, "
                "every other cookie call answers 403 `mfa_required`. Send them to `enrolment_url`.",
            },
            "enrolment_url": nullable(
                {
                    "type": "string",
                    "description": "Where the user sets up a second factor (null when none is required).",
                }
            ),
        },
    },
)
CURRENT_SESSION = component(
    "CurrentSession",
    {
        "type": "object",
        "required": ["user", "mfa", "session", "csrf_token"],
        "additionalProperties": False,
        "properties": {
            "user": USER,
            "mfa": MFA,
            "session": {
                "type": "object",
                "required": ["id", "created_at", "expires_at", "idle_expires_at"],
                "additionalProperties": False,
                "properties": {
                    "id": {"type": "string", "description": "Public id (not the cookie value)."},
                    "created_at": DATETIME,
                    "expires_at": DATETIME,
                    "idle_expires_at": DATETIME,
                },
            },
            "csrf_token": {
                "type": "string",
                "description": "Send it as the X-CSRFToken header on state-changing calls made with this cookie.",
            },
        },
    },
)
SESSION = component(
    "Session",
    {
        "type": "object",
        "required": [
            "id",
            "user_id",
            "created_at",
            "last_seen_at",
            "expires_at",
            "idle_expires_at",
            "ip",
            "user_agent",
            "auth_methods",
            "mfa_verified",
            "current",
        ],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string"},
            "user_id": {"type": "integer"},
            "created_at": DATETIME,
            "last_seen_at": DATETIME,
            "expires_at": DATETIME,
            "idle_expires_at": DATETIME,
            "ip": {"type": "string"},
            "user_agent": {"type": "string"},
            "auth_methods": {"type": "array", "items": {"type": "string"}},
            "mfa_verified": {"type": "boolean"},
            "current": {"type": "boolean", "description": "The session making this request (cookie calls)."},
        },
    },
)
SESSION_LIST = component(
    "SessionList",
    {
        "type": "object",
        "required": ["user_id", "sessions"],
        "additionalProperties": False,
        "properties": {"user_id": {"type": "integer"}, "sessions": {"type": "array", "items": SESSION}},
    },
)
SESSION_ID_PARAM: Final = {
    "session_id": (
        {"type": "string", "pattern": "^[0-9a-f]{16}$"},
        "The session's public id, as listed by GET /api/auth/sessions.",
    )
}


def iso(value: datetime) -> str:
    return value.isoformat()


def user_json(user: User | SessionUser) -> dict[str, Any]:
    return {"id": user.id, "email": user.email, "name": user.display_name, "roles": [user.role]}


def session_json(settings: Settings, record: UserSession, current_id: str | None) -> dict[str, Any]:
    return {
        "id": record.public_id,
        "user_id": record.user_id,
        "created_at": iso(record.created_at),
        "last_seen_at": iso(record.last_seen_at),
        "expires_at": iso(record.expires_at),
        "idle_expires_at": iso(sessions.idle_expires_at(settings, record)),
        "ip": record.ip,
        "user_agent": record.user_agent,
        "auth_methods": list(record.auth_methods),
        "mfa_verified": record.mfa_verified,
        "current": record.id == current_id,
    }


def is_live(settings: Settings, record: UserSession, now: datetime) -> bool:
    return (
        record.revoked_at is None
        and now < record.expires_at
        and now < sessions.idle_expires_at(settings, record)
        and record.user.is_active
    )


@bp.get("/auth/session")
@api_auth(tokens=False)
@document(
    operation_id="getCurrentSession",
    summary="The signed-in user, their second factors and this session",
    description=(
        "Called by the browser with the session cookie (credentials: 'include'). 401 `not_authenticated` "
        "when nobody is signed in; 403 `permission_denied` for a service token (a token has no session). "
        "`csrf_token` is what state-changing cookie calls send as X-CSRFToken. `mfa.enrolment_required`: the "
        "user must set up a second factor before any other call works (this one still answers)."
    ),
    response=CURRENT_SESSION,
    tags=TAGS,
)
def current_session() -> Response:
    who = principal().session
    assert who is not None  # cookie-only endpoint
    settings = get_settings()
    # Everything below was read by the request's one SELECT (app.auth.sessions.load_session).
    record = who.live
    mfa = hooks.session_mfa_summary(who.mfa)
    required = hooks.enrolment_required(db_session(), settings, record.user.role, who.mfa)
    enrol = settings.base_url.rstrip("/") + url_for("mfa.account") if required else None
    return json_response(
        {
            "user": user_json(record.user),
            "mfa": {
                "enrolled": mfa.enrolled,
                "methods": list(mfa.methods),
                "enrolment_required": required,
                "enrolment_url": enrol,
            },
            "session": {
                "id": record.public_id,
                "created_at": iso(record.created_at),
                "expires_at": iso(record.expires_at),
                "idle_expires_at": iso(sessions.idle_expires_at(settings, record)),
            },
            "csrf_token": generate_csrf(),
        }
    )


def _target_user_id(caller: Principal) -> int:
    raw = request.args.get("user_id")
    if raw is None:  # an empty user_id= is a value that is not a user id (refused below), not "left out"
        if caller.user_id is None:
            raise AppError(
                "validation_failed",
                fields={"user_id": "Required with a service token: whose sessions to list."},
            )
        return caller.user_id
    if not _USER_ID.fullmatch(raw) or not 1 <= int(raw) <= ID_MAX:
        raise AppError("validation_failed", fields={"user_id": f"Use a user id: a whole number from 1 to {ID_MAX}."})
    user_id = int(raw)
    if not caller.may_act_for(user_id):
        raise AppError(
            "permission_denied",
            "You can list only your own sessions.",
            "Leave out user_id, or ask an administrator.",
        )
    return user_id


@bp.get("/auth/sessions")
@api_auth("sessions:read")
@document(
    operation_id="listSessions",
    summary="Live sign-in sessions of a user",
    description=(
        "With the session cookie: your own sessions (admins may pass `user_id`). With a service token "
        "(scope `sessions:read`): `user_id` is required."
    ),
    response=SESSION_LIST,
    query=(
        QueryParam(
            "user_id",
            {"type": "integer", "minimum": 1, "maximum": ID_MAX},
            "Whose sessions; defaults to the signed-in user.",
        ),
    ),
    errors=(404, 422),
    tags=TAGS,
)
def list_sessions() -> Response:
    caller = principal()
    user_id = _target_user_id(caller)
    db = db_session()
    settings = get_settings()
    if db.get(User, user_id) is None:
        raise AppError("not_found", f"There is no user with id {user_id}.")
    now = utcnow()
    rows = db.scalars(
        select(UserSession)
        .where(UserSession.user_id == user_id, UserSession.revoked_at.is_(None), UserSession.expires_at > now)
        .order_by(UserSession.last_seen_at.desc())
    ).all()
    current_id = caller.session.live.id if caller.session is not None else None
    return json_response(
        {
            "user_id": user_id,
            "sessions": [session_json(settings, r, current_id) for r in rows if is_live(settings, r, now)],
        }
    )


@bp.delete("/auth/sessions/<session_id>")
@api_auth("sessions:write")
@document(
    operation_id="revokeSession",
    summary="Revoke a sign-in session",
    description=(
        "With the session cookie: one of your own sessions (admins: anyone's); needs the X-CSRFToken header. "
        "With a service token: scope `sessions:write`. Unknown, already ended, or (for members) other "
        "people's sessions all answer 404."
    ),
    status=204,
    response=None,
    response_description="Revoked; the session's cookie no longer signs anyone in.",
    path=SESSION_ID_PARAM,
    errors=(404,),
    tags=TAGS,
)
def revoke_session(session_id: str) -> Response:
    caller = principal()
    db = db_session()
    settings = get_settings()
    not_found = AppError("not_found", "There is no live session with that id.", "List sessions to get current ids.")
    if not _PUBLIC_ID.fullmatch(session_id):
        raise not_found
    record = db.scalar(select(UserSession).where(UserSession.public_id == session_id))
    # Someone else's session looks exactly like a missing one to a member: ids are not a way to probe.
    if record is None or not is_live(settings, record, utcnow()) or not caller.may_act_for(record.user_id):
        raise not_found
    sessions.revoke_session(db, record)
    audit.record(
        db,
        api_audit_ctx(),
        "session.revoke",
        target=f"user:{record.user_id}",
        details={"session": record.public_id, "via": "api"},
    )
    db.commit()
    return Response(status=204)
