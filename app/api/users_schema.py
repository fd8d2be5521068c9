"""The ``/api/users`` resources' JSON shapes: the OpenAPI components and the functions that fill them.

Apart from :mod:`app.api.users_api` (the views) so that each stays readable; the views import from here.
"""

from __future__ import annotations

from typing import Any, Final

from app.api import hooks
from app.api.registry import DATETIME, PROBLEM, JSONSchema, component, nullable
from app.extensions import db_session
from app.models import ROLES, User
from app.models.base import ID_MAX
from app.services import linked_identities

TAGS: Final = ("users",)
PAGE_MAX: Final = 100
PAGE_DEFAULT: Final = 50
_STR: Final[JSONSchema] = {"type": "string"}
ID_SCHEMA: Final[JSONSchema] = {"type": "integer", "minimum": 1, "maximum": ID_MAX}
USER_ID_PARAM: Final = {"user_id": (ID_SCHEMA, "The user's id.")}
_ROLE: Final[JSONSchema] = {"type": "string", "enum": list(ROLES)}
TEXT_LINE: Final = "^[^\\x00-\\x1f\\x7f]*$"
_NAME: Final[JSONSchema] = {
    "type": "string",
    "maxLength": 200,
    "pattern": TEXT_LINE,
    "description": "The display name (may be empty).",
}
_METADATA: Final[JSONSchema] = {
    "type": "object",
    "additionalProperties": True,
    "description": "Free-form JSON the CMS keeps with the user (at most 16 000 characters as JSON).",
}

USER = component(
    "ManagedUser",
    {
        "type": "object",
        "required": [
            "id",
            "email",
            "name",
            "role",
            "active",
            "email_verified",
            "password_set",
            "must_change_password",
            "mfa",
            "metadata",
            "created_at",
        ],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "integer"},
            "email": _STR,
            "name": _STR,
            "role": _ROLE,
            "active": {"type": "boolean", "description": "false: disabled (cannot sign in)."},
            "email_verified": {"type": "boolean"},
            "password_set": {
                "type": "boolean",
                "description": "false: invitation pending, or the user signs in only with a linked identity.",
            },
            "must_change_password": {"type": "boolean"},
            "mfa": {
                "type": "object",
                "required": ["enrolled", "methods"],
                "additionalProperties": False,
                "properties": {
                    "enrolled": {"type": "boolean"},
                    "methods": {
                        "type": "array",
                        "items": {"type": "string", "enum": ["totp", "webauthn", "recovery_code"]},
                    },
                },
            },
            "metadata": _METADATA,
            "created_at": DATETIME,
        },
    },
)
USER_DETAIL = component(
    "ManagedUserDetail",
    {
        "type": "object",
        "required": ["user", "lock"],
        "additionalProperties": False,
        "properties": {
            "user": USER,
            "lock": {
                "type": "object",
                "required": ["locked", "retry_after"],
                "additionalProperties": False,
                "description": "The sign-in throttle's lock of the account (POST …/unlock lifts it).",
                "properties": {
                    "locked": {"type": "boolean"},
                    "retry_after": {"type": "integer", "minimum": 0, "description": "Seconds until it lifts."},
                },
            },
        },
    },
)
USER_PAGE = component(
    "ManagedUserPage",
    {
        "type": "object",
        "required": ["users", "next_cursor"],
        "additionalProperties": False,
        "properties": {
            "users": {"type": "array", "items": USER},
            "next_cursor": nullable(
                {**_STR, "description": "Pass it as `cursor` for the next page; null on the last."}
            ),
        },
    },
)
CREATE_USER = component(
    "ManagedUserCreate",
    {
        "type": "object",
        "required": ["email"],
        "additionalProperties": False,
        "properties": {
            "email": {"type": "string", "minLength": 3, "maxLength": 320},
            "name": _NAME,
            "role": {**_ROLE, "default": "member"},
            "metadata": _METADATA,
        },
    },
)
CREATED_USER = component(
    "ManagedUserCreated",
    {
        "type": "object",
        "required": ["user", "invitation"],
        "additionalProperties": False,
        "properties": {
            "user": USER,
            "invitation": {
                "type": "object",
                "required": ["sent", "error"],
                "additionalProperties": False,
                "description": "The invitation mail (a 7-day link to choose a password). When it could not be sent "
                "the user exists anyway: send it again with POST …/invite once the mailer works.",
                "properties": {
                    "sent": {"type": "boolean"},
                    "error": nullable(PROBLEM),
                },
            },
        },
    },
)
UPDATE_USER = component(
    "ManagedUserUpdate",
    {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {"name": _NAME, "role": _ROLE, "metadata": _METADATA},
    },
)
USER_ACTION = component(
    "ManagedUserAction",
    {
        "type": "object",
        "required": ["user", "changed"],
        "additionalProperties": False,
        "properties": {
            "user": USER,
            "changed": {"type": "boolean", "description": "false: it already was so (nothing was done)."},
            "sessions_ended": {"type": "integer", "minimum": 0, "description": "Disable: sessions signed out."},
            "removed": {
                "type": "object",
                "additionalProperties": {"type": "integer"},
                "description": "MFA reset: how many of each kind of factor were removed.",
            },
        },
    },
)
SESSIONS_ENDED = component(
    "SessionsEnded",
    {
        "type": "object",
        "required": ["user_id", "sessions_ended"],
        "additionalProperties": False,
        "properties": {"user_id": {"type": "integer"}, "sessions_ended": {"type": "integer", "minimum": 0}},
    },
)
IDENTITY = component(
    "LinkedIdentity",
    {
        "type": "object",
        "required": [
            "id",
            "provider_config",
            "provider_type",
            "provider_name",
            "email",
            "usable",
            "created_at",
            "last_used_at",
        ],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "integer"},
            "provider_config": {
                "type": "object",
                "required": ["id", "name"],
                "additionalProperties": False,
                "properties": {"id": {"type": "integer"}, "name": _STR},
            },
            "provider_type": _STR,
            "provider_name": {**_STR, "description": "The provider type's name (Google, GitHub, …)."},
            "email": {**_STR, "description": "The address the provider gave when it was last used."},
            "usable": {"type": "boolean", "description": "Its provider config can sign the user in now."},
            "created_at": DATETIME,
            "last_used_at": nullable(DATETIME),
        },
    },
)
IDENTITY_LIST = component(
    "LinkedIdentityList",
    {
        "type": "object",
        "required": ["user_id", "identities"],
        "additionalProperties": False,
        "properties": {"user_id": {"type": "integer"}, "identities": {"type": "array", "items": IDENTITY}},
    },
)


def user_json(user: User) -> dict[str, Any]:
    summary = hooks.mfa_summary(db_session(), user)
    return {
        "id": user.id,
        "email": user.email,
        "name": user.display_name,
        "role": user.role,
        "active": user.is_active,
        "email_verified": user.email_verified_at is not None,
        "password_set": user.password_hash is not None,
        "must_change_password": user.must_change_password,
        "mfa": {"enrolled": summary.enrolled, "methods": list(summary.methods)},
        "metadata": dict(user.user_metadata or {}),
        "created_at": user.created_at.isoformat(),
    }


def identity_json(identity: linked_identities.LinkedIdentity) -> dict[str, Any]:
    return {
        "id": identity.id,
        "provider_config": {"id": identity.provider_config_id, "name": identity.provider_config},
        "provider_type": identity.provider_type,
        "provider_name": identity.provider_name,
        "email": identity.email,
        "usable": identity.usable,
        "created_at": identity.created_at.isoformat(),
        "last_used_at": identity.last_used_at.isoformat() if identity.last_used_at else None,
    }
