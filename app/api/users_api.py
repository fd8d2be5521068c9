"""``/api/users``: people, for a CMS that manages them without the console.

Scopes ``users:read`` (list, search, read, sessions, linked identities) and ``users:write`` (create with an
invitation, edit name/role/metadata, disable, enable, unlock, reset MFA, end sessions, unlink identities);
admins hold both through the session cookie. The rules are the console's because these views call the
console's services (``app.auth.user_admin``, ``app.auth.lifecycle``, ``app.auth.linked_identities``): the last
active admin cannot be demoted or disabled, an admin cannot disable or demote themselves, an identity that is a
user's last way to sign in cannot be unlinked — each refusal a 409 ``conflict`` that is audited. Every change is
audited with the caller (``service_token:<id>`` or the admin) as the actor.

Passwords never travel through the API: a new user gets an invitation mail and chooses their own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from flask import request
from werkzeug.wrappers import Response

from app.api import bodies
from app.api.auth_api import SESSION_ID_PARAM, SESSION_LIST, session_json
from app.api.registry import QueryParam, document
from app.api.security import api_audit_ctx, api_auth, api_blueprint, json_response, principal
from app.api.users_schema import (
    CREATE_USER,
    CREATED_USER,
    ID_SCHEMA,
    IDENTITY_LIST,
    PAGE_DEFAULT,
    PAGE_MAX,
    SESSIONS_ENDED,
    TAGS,
    TEXT_LINE,
    UPDATE_USER,
    USER,
    USER_ACTION,
    USER_DETAIL,
    USER_ID_PARAM,
    USER_PAGE,
    identity_json,
    user_json,
)
from app.auth import lifecycle, sessions, throttle, user_admin
from app.errors import AppError
from app.extensions import db_session, get_limit_storage, get_settings
from app.models import ROLES, User
from app.models.base import ID_MAX
from app.services import linked_identities

bp = api_blueprint("api_users", __name__)


def _user(user_id: int) -> User:
    return user_admin.get_user(db_session(), user_id)


def _actor() -> User | None:
    """The admin acting through the cookie (the console's self rules apply); ``None`` for a token."""
    return principal().user


def _metadata_text(data: Mapping[str, Any], user: User | None = None) -> str:
    """``metadata`` as the service takes it (JSON text), or the stored value when the body leaves it out."""
    if "metadata" not in data:
        return user_admin.format_metadata(user.user_metadata) if user is not None else ""
    value = data["metadata"]
    if not isinstance(value, dict):
        raise AppError("validation_failed", fields={"metadata": 'Use a JSON object, like {"team": "sales"}.'})
    return json.dumps(value)


def _role(data: Mapping[str, Any], default: str) -> str:
    value = data.get("role", default)
    if value not in ROLES:
        raise AppError("validation_failed", fields={"role": "Choose admin or member."})
    return str(value)


@bp.get("/users")
@api_auth("users:read")
@document(
    operation_id="listUsers",
    summary="List or search users",
    description="Users in id order, `limit` per page (1 to 100, default 50); pass `next_cursor` back as `cursor` "
    "until it is null (keyset paging: users added or deleted meanwhile never make a page skip or repeat one). "
    "`q` keeps users whose email or name contains it (case-insensitive). Scope `users:read`.",
    response=USER_PAGE,
    query=(
        QueryParam("q", {"type": "string", "maxLength": 200, "pattern": TEXT_LINE}, "A part of the email or name."),
        QueryParam("limit", {"type": "integer", "minimum": 1, "maximum": PAGE_MAX, "default": PAGE_DEFAULT}),
        QueryParam("cursor", {"type": "string", "pattern": "^[0-9]{1,10}$"}, "The previous page's next_cursor."),
    ),
    tags=TAGS,
)
def list_users() -> Response:
    query = request.args.get("q", "")
    if len(query) > 200:
        raise AppError("validation_failed", fields={"q": "Use at most 200 characters."})
    limit = bodies.query_int("limit", default=PAGE_DEFAULT, low=1, high=PAGE_MAX)
    raw_cursor = request.args.get("cursor")
    if raw_cursor is not None and not (raw_cursor.isascii() and raw_cursor.isdigit() and 1 <= len(raw_cursor) <= 10):
        raise AppError("validation_failed", fields={"cursor": "Pass the next_cursor of the previous page unchanged."})
    after = min(int(raw_cursor), ID_MAX) if raw_cursor is not None else None
    page = user_admin.list_users_after(db_session(), query=query, after=after, limit=limit)
    return json_response(
        {
            "users": [user_json(u) for u in page.users],
            "next_cursor": str(page.next_cursor) if page.next_cursor is not None else None,
        }
    )


@bp.post("/users")
@api_auth("users:write")
@document(
    operation_id="createUser",
    summary="Create a user and invite them",
    description="Creates the user and mails them an invitation: a 7-day link where they choose their password "
    "(passwords never travel through the API). The user exists even when the mail could not be sent "
    "(`invitation.sent: false`; send it again with POST /api/users/{user_id}/invite). 409 `conflict` on `email` "
    "when the address is taken; 422 `invalid_config` when invitations are off (AMI_AUTH_SIGNUP=closed: create "
    "the user in the console with a password instead). Audited (`user.create`, `user.invited`). Scope "
    "`users:write`.",
    status=201,
    response=CREATED_USER,
    response_description="Created; `Location` is the user's URL.",
    request=CREATE_USER,
    errors=(409, 422),
    tags=TAGS,
    idempotent=True,
)
def create_user() -> Response:
    data = bodies.json_object(allowed=("email", "name", "role", "metadata"), required=("email",))
    email = bodies.plain_text(data["email"], "email", max_length=320)
    name = bodies.plain_text(data.get("name", ""), "name", max_length=200)
    role = _role(data, "member")
    metadata = _metadata_text(data)
    db = db_session()
    try:
        created = user_admin.create_user(
            db,
            get_settings(),
            api_audit_ctx(),
            email=email,
            display_name=name,
            role=role,
            metadata=metadata,
            mode="invite",
        )
    except AppError:
        db.rollback()
        raise
    error = created.mail_error
    body = {
        "user": user_json(created.user),
        "invitation": {
            "sent": error is None,
            "error": {"code": error.code, "message": error.text, "hint": error.help} if error is not None else None,
        },
    }
    return json_response(body, 201, location=f"/api/users/{created.user.id}")


@bp.get("/users/<int:user_id>")
@api_auth("users:read")
@document(
    operation_id="getUser",
    summary="One user",
    description="The user, and whether the sign-in throttle has locked their account. Scope `users:read`.",
    response=USER_DETAIL,
    path=USER_ID_PARAM,
    errors=(404,),
    tags=TAGS,
)
def get_user(user_id: int) -> Response:
    user = _user(user_id)
    lock = throttle.account_status(get_limit_storage(), user.email)
    return json_response({"user": user_json(user), "lock": {"locked": lock.locked, "retry_after": lock.retry_after()}})


@bp.patch("/users/<int:user_id>")
@api_auth("users:write")
@document(
    operation_id="updateUser",
    summary="Change a user's name, role or metadata",
    description="Fields left out keep their value. The console's rules apply: the last active admin cannot be "
    "made a member, and an admin (cookie call) cannot change their own role — 409 `conflict`, audited. "
    "Audited as `user.update` (field names, and the role change). Scope `users:write`.",
    response=USER,
    request=UPDATE_USER,
    path=USER_ID_PARAM,
    errors=(404, 409, 422),
    tags=TAGS,
)
def update_user(user_id: int) -> Response:
    data = bodies.json_object(allowed=("name", "role", "metadata"))
    if not data:
        raise AppError("validation_failed", "Nothing to change.", "Send name, role or metadata.")
    db = db_session()
    user = _user(user_id)
    name = bodies.plain_text(data["name"], "name", max_length=200) if "name" in data else user.display_name
    role = _role(data, user.role)
    metadata = _metadata_text(data, user)
    try:
        user_admin.update_user(db, api_audit_ctx(), _actor(), user, display_name=name, role=role, metadata=metadata)
    except AppError:
        db.rollback()
        raise
    return json_response(user_json(user))


@bp.post("/users/<int:user_id>/invite")
@api_auth("users:write")
@document(
    operation_id="inviteUser",
    summary="Send the invitation again",
    description="Mails a new 7-day invitation link (an earlier one stops working). 409 `conflict` when the user "
    "has already chosen a password (send a password reset instead) or is disabled. Audited (`user.invited`). "
    "Scope `users:write`.",
    response=USER_ACTION,
    path=USER_ID_PARAM,
    errors=(404, 409, 422),
    tags=TAGS,
)
def invite_user(user_id: int) -> Response:
    db = db_session()
    user = _user(user_id)
    caller = principal()
    inviter = caller.user.email if caller.user is not None else ""
    try:
        lifecycle.send_invite(db, get_settings(), api_audit_ctx(), user, inviter=inviter)
    except AppError:
        db.rollback()
        raise
    return json_response({"user": user_json(user), "changed": True})


@bp.post("/users/<int:user_id>/disable")
@api_auth("users:write")
@document(
    operation_id="disableUser",
    summary="Disable a user",
    description="The user can no longer sign in: every session ends at once and their mail links stop "
    "working. Refused (409 `conflict`, audited) for the last active admin and, for a cookie call, for yourself. "
    "Audited (`user.disable`). Scope `users:write`.",
    response=USER_ACTION,
    path=USER_ID_PARAM,
    errors=(404, 409),
    tags=TAGS,
)
def disable_user(user_id: int) -> Response:
    db = db_session()
    user = _user(user_id)
    changed = user.is_active
    try:
        ended = user_admin.set_active(db, api_audit_ctx(), _actor(), user, False)
    except AppError:
        db.rollback()
        raise
    return json_response({"user": user_json(user), "changed": changed, "sessions_ended": ended})


@bp.post("/users/<int:user_id>/enable")
@api_auth("users:write")
@document(
    operation_id="enableUser",
    summary="Enable a user",
    description="The user can sign in again. Audited (`user.enable`). Scope `users:write`.",
    response=USER_ACTION,
    path=USER_ID_PARAM,
    errors=(404,),
    tags=TAGS,
)
def enable_user(user_id: int) -> Response:
    db = db_session()
    user = _user(user_id)
    changed = not user.is_active
    user_admin.set_active(db, api_audit_ctx(), _actor(), user, True)
    return json_response({"user": user_json(user), "changed": changed})


@bp.post("/users/<int:user_id>/unlock")
@api_auth("users:write")
@document(
    operation_id="unlockUser",
    summary="Lift the sign-in lock of a user's account",
    description="Clears the sign-in throttle's lock and failure counts for the account (what the console's "
    "Unlock does). `changed` says whether it was locked. Audited (`account.unlocked`). Scope `users:write`.",
    response=USER_ACTION,
    path=USER_ID_PARAM,
    errors=(404,),
    tags=TAGS,
)
def unlock_user(user_id: int) -> Response:
    user = _user(user_id)
    was_locked = user_admin.unlock(db_session(), get_limit_storage(), api_audit_ctx(), user)
    return json_response({"user": user_json(user), "changed": was_locked})


@bp.post("/users/<int:user_id>/mfa/reset")
@api_auth("users:write")
@document(
    operation_id="resetUserMfa",
    summary="Remove every second factor of a user",
    description="Deletes their authenticator app, passkeys and recovery codes (a user who lost them all); they "
    "set one up again at their next sign-in if their role requires it. Audited (`mfa.reset`, with how many of "
    "each were removed). Scope `users:write`.",
    response=USER_ACTION,
    path=USER_ID_PARAM,
    errors=(404,),
    tags=TAGS,
)
def reset_user_mfa(user_id: int) -> Response:
    user = _user(user_id)
    removed = user_admin.reset_mfa(db_session(), api_audit_ctx(), user, via="api")
    return json_response({"user": user_json(user), "changed": any(removed.values()), "removed": removed})


@bp.get("/users/<int:user_id>/sessions")
@api_auth("users:read")
@document(
    operation_id="listUserSessions",
    summary="A user's live sign-in sessions",
    description="Sessions that would still be accepted, most recently seen first. Scope `users:read`.",
    response=SESSION_LIST,
    path=USER_ID_PARAM,
    errors=(404,),
    tags=TAGS,
)
def list_user_sessions(user_id: int) -> Response:
    user = _user(user_id)
    settings = get_settings()
    caller = principal()
    current = caller.session.live.id if caller.session is not None else None
    rows = sessions.live_sessions(db_session(), settings, user.id)
    return json_response({"user_id": user.id, "sessions": [session_json(settings, r, current) for r in rows]})


@bp.delete("/users/<int:user_id>/sessions/<session_id>")
@api_auth("users:write")
@document(
    operation_id="revokeUserSession",
    summary="End one of a user's sessions",
    description="Its cookie no longer signs anyone in. 404 when it is not a live session of this user. Audited "
    "(`session.revoked`). Scope `users:write`.",
    status=204,
    response=None,
    response_description="Ended.",
    path={**USER_ID_PARAM, **SESSION_ID_PARAM},
    errors=(404,),
    tags=TAGS,
)
def revoke_user_session(user_id: int, session_id: str) -> Response:
    db = db_session()
    user = _user(user_id)
    try:
        user_admin.revoke_session(db, api_audit_ctx(), user, session_id[:32])
    except AppError:
        db.rollback()
        raise
    return Response(status=204)


@bp.delete("/users/<int:user_id>/sessions")
@api_auth("users:write")
@document(
    operation_id="revokeUserSessions",
    summary="End every session of a user",
    description="Signs the user out everywhere (they can sign in again). Audited (`session.revoked_all`). "
    "Scope `users:write`.",
    response=SESSIONS_ENDED,
    path=USER_ID_PARAM,
    errors=(404,),
    tags=TAGS,
)
def revoke_user_sessions(user_id: int) -> Response:
    user = _user(user_id)
    ended = user_admin.revoke_all_sessions(db_session(), api_audit_ctx(), user)
    return json_response({"user_id": user.id, "sessions_ended": ended})


@bp.get("/users/<int:user_id>/identities")
@api_auth("users:read")
@document(
    operation_id="listUserIdentities",
    summary="The sign-in identities linked to a user",
    description="The Google, GitHub, Entra ID and OpenID accounts that sign this user in. Scope `users:read`.",
    response=IDENTITY_LIST,
    path=USER_ID_PARAM,
    errors=(404,),
    tags=TAGS,
)
def list_user_identities(user_id: int) -> Response:
    user = _user(user_id)
    found = linked_identities.list_identities(db_session(), user.id)
    return json_response({"user_id": user.id, "identities": [identity_json(i) for i in found]})


@bp.delete("/users/<int:user_id>/identities/<int:identity_id>")
@api_auth("users:write")
@document(
    operation_id="unlinkUserIdentity",
    summary="Unlink a sign-in identity from a user",
    description="That provider account no longer signs this user in (signing in with it again links it only "
    "under the usual rules). Never the last way to sign in: without a password, a passkey or another usable "
    "identity it is refused with 409 `conflict` (audited); send a password reset link first. Audited "
    "(`oauth.identity_unlinked`). Scope `users:write`.",
    status=204,
    response=None,
    response_description="Unlinked.",
    path={**USER_ID_PARAM, "identity_id": (ID_SCHEMA, "The linked identity's id, as listed.")},
    errors=(404, 409),
    tags=TAGS,
)
def unlink_user_identity(user_id: int, identity_id: int) -> Response:
    db = db_session()
    user = _user(user_id)
    try:
        linked_identities.unlink(db, api_audit_ctx(), user, identity_id, via="api")
        db.commit()
    except AppError:
        db.rollback()
        raise
    return Response(status=204)
