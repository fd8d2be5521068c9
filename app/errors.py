"""The error taxonomy: one code per kind of failure, shared by HTML pages, the JSON API and the CLI.

JSON responses always have the shape ``{"error": {"code", "message", "hint", "fields": {...}}}``.
HTML forms show ``hint`` (or the per-field message) next to the field that caused it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from flask import has_app_context
from flask_babel import gettext

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


class Text(str):
    """English text that keeps its message id and values, so it can be shown in the reader's language."""

    msgid: str
    values: dict[str, Any]

    def __new__(cls, msgid: str, values: dict[str, Any]) -> Text:
        text = super().__new__(cls, msgid % values if values else msgid)
        text.msgid, text.values = msgid, values
        return text

    def __getnewargs__(self) -> tuple[str, dict[str, Any]]:  # type: ignore[override]
        return self.msgid, self.values  # copy and pickle rebuild it from its id and values


def N_(message: str, **values: Any) -> str:  # babel extracts N_("…"): translated when shown
    """Mark ``message`` for translation (``make messages`` extracts it) without translating it yet: the domain
    raises errors with no request around (CLI, jobs); :func:`translated` reads it in the viewer's language.
    Values stay out of the message id: ``N_("Use at most %(n)s characters.", n=200)``; a value that is marked
    text itself is translated with it, any other value (a name, an address) is shown as it is."""
    return Text(message, values)


def translated(text: str) -> str:
    """``text`` in the current request's language (app.i18n) when an app is there; as written otherwise."""
    if not has_app_context():
        return text
    if isinstance(text, Text):
        message = str(gettext(text.msgid))
        if not text.values:
            return message
        # A value may be marked text itself ("Try again in %(wait)s." with "2 minutes"); data stays as it is.
        values = {name: translated(value) if isinstance(value, Text) else value for name, value in text.values.items()}
        return message % values
    # Unmarked text (a provider's own error description, an exception's message) reads as it was written,
    # unless it is one of our messages word for word.
    return str(gettext(text))


@dataclass(frozen=True)
class ErrorKind:
    status: int
    message: str
    hint: str


TAXONOMY: dict[ErrorCode, ErrorKind] = {
    "not_authenticated": ErrorKind(401, N_("You are not signed in."), N_("Sign in, or send a valid service token.")),
    "invalid_config": ErrorKind(
        422, N_("The configuration is incomplete or invalid."), N_("Check the highlighted settings and save again.")
    ),
    "invalid_credentials": ErrorKind(
        401, N_("The credentials were not accepted."), N_("Check the value and try again; it may have been revoked.")
    ),
    "token_expired": ErrorKind(401, N_("The token has expired."), N_("Refresh it, or start again to get a new one.")),
    "consent_required": ErrorKind(
        409, N_("The provider needs the user's consent again."), N_("Reconnect the account to grant access again.")
    ),
    "rate_limited": ErrorKind(429, N_("Too many attempts."), N_("Wait a moment and try again.")),
    "provider_unreachable": ErrorKind(
        502, N_("The provider could not be reached."), N_("Check the URL and network access, then try again.")
    ),
    "permission_denied": ErrorKind(
        403, N_("You do not have permission to do that."), N_("Ask an administrator for access.")
    ),
    "not_found": ErrorKind(404, N_("Not found."), N_("Check the address; the item may have been deleted.")),
    "method_not_allowed": ErrorKind(
        405, N_("This method is not allowed here."), N_("Use one of the methods listed in the Allow header.")
    ),
    "conflict": ErrorKind(409, N_("That conflicts with existing data."), N_("Reload the page and try again.")),
    "secret_unreadable": ErrorKind(
        500,
        N_("A stored secret could not be decrypted."),
        N_("The master key that encrypted it may be missing; check AMI_AUTH_MASTER_KEYS, or replace the secret."),
    ),
    "mfa_required": ErrorKind(
        401,
        N_("A second factor is required."),
        N_("Complete sign-in with your authenticator, passkey or recovery code."),
    ),
    "validation_failed": ErrorKind(422, N_("Some values are not valid."), N_("Correct the highlighted fields.")),
    "service_unavailable": ErrorKind(
        503,
        N_("The service is temporarily unavailable."),
        N_("Nothing was changed. Try again in a minute; if it keeps happening, tell an administrator."),
    ),
    "internal_error": ErrorKind(
        500,
        N_("Something went wrong on our side."),
        N_("Try again; if it persists, give the reference to an administrator."),
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
        return translated(self.message or self.kind.message)

    @property
    def help(self) -> str:
        return translated(self.hint or self.kind.hint)

    @property
    def field_texts(self) -> dict[str, str]:
        """``fields`` in the reader's language."""
        return {name: translated(message) for name, message in self.fields.items()}

    def to_dict(self, reference: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "code": self.code,
            "message": self.text,
            "hint": self.help,
            "fields": self.field_texts,
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
