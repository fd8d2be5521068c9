"""SMTP logins: build the mailer's :class:`SmtpTarget` from an account and its config, verify it
(connect, EHLO, STARTTLS, AUTH, NOOP — app/mailer.py does the talking, through the outbound guard
of ``AMI_AUTH_OUTBOUND_ALLOW``), and put each failure on the field to blame: a refused login on the password,
an unreachable server on the config's host (one answer for every failure before an SMTP greeting: see the
mailer).

Security ``none`` is refused unless the config's ``allow_insecure`` box is ticked (RFC 8314 §3: clear-text
submission should not be used). XOAUTH2 sends a connected Google, Microsoft or OpenID account's access
token: the app factory registers the token source (:mod:`app.connectors.xoauth2`) with
:func:`set_xoauth2_token_provider`; outside the app XOAUTH2 fails with ``invalid_config`` saying so.

This is how the connectors verify an entry with `verify: {kind: smtp}`; the cross-field rules of its form
stay in the catalog's hook (app/providers/hooks/smtp.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from app.errors import AppError
from app.i18n import N_
from app.i18n import gettext as _
from app.mailer import SmtpTarget, build_message, smtp_send, smtp_verify
from app.outbound import OutboundGuard
from app.providers.types import Which
from app.providers.verify_context import VerifyContext
from app.settings import Settings
from app.vault.secret import Secret

# security (catalog) → the mailer's name for it
SECURITY: dict[str, Literal["starttls", "tls", "none"]] = {"starttls": "starttls", "ssl": "tls", "none": "none"}

XOAUTH2_UNAVAILABLE = N_("XOAUTH2 needs the AMI Auth app to read a connected account's access token.")

# (settings, oauth_account_id) → a current access token (app.connectors.xoauth2 registers it).
TokenProvider = Callable[[Settings, int], str]
_token_provider: TokenProvider | None = None


def set_xoauth2_token_provider(provider: TokenProvider | None) -> None:
    global _token_provider
    _token_provider = provider


def smtp_target(
    values: Mapping[Which, Mapping[str, Any]],
    secrets: Mapping[str, Secret | None],
    settings: Settings,
    *,
    before_send: Callable[[], None] | None = None,
) -> SmtpTarget:
    """The mailer target for an SMTP account (effective config + account values, decrypted password)."""
    config, account = values.get("config", {}), values.get("account", {})
    security = SECURITY.get(str(config.get("security") or "starttls"), "starttls")
    if security == "none" and not config.get("allow_insecure"):
        raise AppError(
            "invalid_config",
            _("Security “none” sends the password and mail in clear text."),
            _("Use STARTTLS or SSL/TLS, or tick the provider config's explicit allow for clear text."),
            fields={"config.allow_insecure": _("Tick this to allow clear text, or choose STARTTLS or SSL/TLS.")},
        )
    mechanism = str(account.get("auth_mechanism") or "PLAIN")
    username = str(account.get("username") or "")
    token = ""
    if username and mechanism == "XOAUTH2":
        oauth_account = account.get("oauth_account_id")
        if not isinstance(oauth_account, int):
            raise AppError(
                "invalid_config",
                _("XOAUTH2 needs the connected account whose token it sends."),
                _("Enter the id of a connected Google, Microsoft or OpenID account."),
                fields={"oauth_account_id": _("Enter the id of a connected OAuth account.")},
            )
        if _token_provider is None:
            raise AppError(
                "invalid_config",
                _(XOAUTH2_UNAVAILABLE),
                _("Use PLAIN or LOGIN with an app password outside the app."),
                fields={"auth_mechanism": _("XOAUTH2 is not available here.")},
            )
        token = _token_provider(settings, oauth_account)
    password = secrets.get("password")
    return SmtpTarget(
        host=str(config.get("host") or ""),
        port=int(config.get("port") or 587),
        security=security,
        username=username,
        password=password.reveal() if password is not None else "",
        from_address=str(account.get("from_address") or ""),
        timeout=settings.outbound_timeout,
        ca_file=str(settings.smtp_ca_file) if settings.smtp_ca_file else None,
        local_hostname=urlsplit(settings.base_url).hostname or "localhost",
        mechanism=cast(Literal["PLAIN", "LOGIN", "XOAUTH2"], mechanism) if username else None,
        oauth_token=token,
        before_send=before_send,
        guard=OutboundGuard.from_settings(settings),
    )


def blame(error: AppError, values: Mapping[Which, Mapping[str, Any]]) -> AppError:
    """The mailer's error with the field to blame: the login → password (or the OAuth account), the
    server → the config's host, a mechanism the server lacks → auth_mechanism, the sender → from_address."""
    if error.fields:
        return error
    mechanism = values.get("account", {}).get("auth_mechanism")
    text = str(error.message or "").lower()  # the English message: error.text is in the reader's language
    if error.code == "invalid_credentials":
        name = "oauth_account_id" if mechanism == "XOAUTH2" else "password"
        fields = {name: _("The server did not accept this login.")}
        if "requires a login" in text:
            fields = {"username": _("The server requires a login: add the user name and password.")}
    elif error.code == "provider_unreachable":
        fields = {"config.host": error.text}
    elif "sender" in text:
        fields = {"from_address": _("The server refused this sender address.")}
    elif "auth " in text or "login method" in text:
        fields = {"auth_mechanism": _("The server does not offer this login method.")}
    elif "authentication" in text:
        fields = {"config.security": _("The server offers no login on this connection: use STARTTLS or SSL/TLS.")}
    else:
        fields = {}
    return AppError(error.code, error.message, error.hint, fields=fields, retry_after=error.retry_after)


def verify_login(context: VerifyContext) -> dict[str, Any]:
    """Connect, EHLO, STARTTLS, AUTH, NOOP; optionally send a test mail. Returns what to keep."""
    try:
        target = smtp_target(context.values, context.secrets, context.settings, before_send=context.before_send)
        smtp_verify(target)
        if context.send_test_to:
            message = build_message(
                target.from_address,
                context.send_test_to,
                _("AMI Auth: SMTP test"),
                _("This is a test mail from AMI Auth: the SMTP account works."),
            )
            smtp_send(target, message)
    except AppError as exc:
        raise blame(exc, context.values) from None
    learned: dict[str, Any] = {"server": f"{target.host}:{target.port}", "security": target.security}
    if target.username:
        learned["login"] = f"{target.mechanism or 'PLAIN/LOGIN'} as {target.username}"
    if context.send_test_to:
        learned["test_mail_to"] = context.send_test_to
    return learned
