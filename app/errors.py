"""The error taxonomy: one code per kind of failure, shared by HTML pages, the JSON API and the CLI.

JSON responses always have the shape ``{"error": {"code", "message", "hint", "fields": {...}}}``.
HTML forms show ``hint`` (or the per-field message) next to the field that caused it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ErrorCode = Literal[
    "not_authenticated",
    "invalid_config",
    "invalid_credentials",
    "token_expired",
    "consent_required",
    "rate_limited",
    "provider_unreachable",
    "permission_denied",
    "not_found",
    "method_not_allowed",
    "conflict",
    "secret_unreadable",
    "mfa_required",
    "validation_failed",
    "service_unavailable",
    "internal_error",
]


@dataclass(frozen=True)
class ErrorKind:
    status: int
    message: str
    hint: str


TAXONOMY: dict[ErrorCode, ErrorKind] = {
    "not_authenticated": ErrorKind(401, "You are not signed in.", "Sign in, or send a valid service token."),
    "invalid_config": ErrorKind(
        422, "The configuration is incomplete or invalid.", "Check the highlighted settings and save again."
    ),
    "invalid_credentials": ErrorKind(
        401, "The credentials were not accepted.", "Check the value and try again; it may have been revoked."
    ),
    "token_expired": ErrorKind(401, "The token has expired.", "Refresh it, or start again to get a new one."),
    "consent_required": ErrorKind(
        409, "The provider needs the user's consent again.", "Reconnect the account to grant access again."
    ),
    "rate_limited": ErrorKind(429, "Too many attempts.", "Wait a moment and try again."),
    "provider_unreachable": ErrorKind(
        502, "The provider could not be reached.", "Check the URL and network access, then try again."
    ),
    "permission_denied": ErrorKind(403, "You do not have permission to do that.", "Ask an administrator for access."),
    "not_found": ErrorKind(404, "Not found.", "Check the address; the item may have been deleted."),
    "method_not_allowed": ErrorKind(
        405, "This method is not allowed here.", "Use one of the methods listed in the Allow header."
    ),
    "conflict": ErrorKind(409, "That conflicts with existing data.", "Reload the page and try again."),
    "secret_unreadable": ErrorKind(
        500,
        "A stored secret could not be decrypted.",
        "The master key that encrypted it may be missing; check AMI_AUTH_MASTER_KEYS, or replace the secret.",
    ),
    "mfa_required": ErrorKind(
        401,
        "A second factor is required.",
        "Complete sign-in with your authenticator, passkey or recovery code.",
    ),
    "validation_failed": ErrorKind(422, "Some values are not valid.", "Correct the highlighted fields."),
    "service_unavailable": ErrorKind(
        503,
        "The service is temporarily unavailable.",
        "Nothing was changed. Try again in a minute; if it keeps happening, tell an administrator.",
    ),
    "internal_error": ErrorKind(
        500,
        "Something went wrong on our side.",
        "Try again; if it persists, give the reference to an administrator.",
    ),
}


@dataclass
class AppError(Exception):
    """A failure in the taxonomy. Raise it from logic; views and the API render it."""

    code: ErrorCode
    message: str | None = None
    hint: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    retry_after: int | None = None
    status: int | None = None

    def __post_init__(self) -> None:
        super().__init__(self.code, self.message)

    @property
    def kind(self) -> ErrorKind:
        return TAXONOMY[self.code]

    @property
    def http_status(self) -> int:
        return self.status or self.kind.status

    @property
    def text(self) -> str:
        return self.message or self.kind.message

    @property
    def help(self) -> str:
        return self.hint or self.kind.hint

    def to_dict(self, reference: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "code": self.code,
            "message": self.text,
            "hint": self.help,
            "fields": dict(self.fields),
        }
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        if reference is not None:
            body["reference"] = reference
        return {"error": body}

    def __str__(self) -> str:
        return f"{self.code}: {self.text}"


def error_body(code: ErrorCode, message: str | None = None, hint: str | None = None, **fields: str) -> dict[str, Any]:
    return AppError(code, message, hint, dict(fields)).to_dict()
