"""Small code where data is not enough, registered in ONE explicit map (allauth's import-magic registry
is the cautionary tale). An entry names its hooks in `hooks:`; the registry refuses a name missing here.

To add one: write `app/providers/hooks/<name>.py` with the functions (tens of lines), then add
`"<name>": Hook(...)` to HOOKS below with a direct import. Every hook point is optional.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.connectors.context import VerifyContext
    from app.providers.entries import ProviderEntry
    from app.providers.types import Which

# Cross-field rules that `visible_when`/`required` cannot say: (entry, which, clean values) → {field: message}.
ValidateHook = Callable[["ProviderEntry", "Which", Mapping[str, Any]], Mapping[str, str]]
# After a successful verification request: (entry, context with the response JSON and headers, the values
# picked by `verify.keep` and the account's values) → the provider_data to store; may raise AppError (e.g. a
# HuggingFace token whose role is below the account's required role).
AfterVerifyHook = Callable[["ProviderEntry", "VerifyContext"], dict[str, Any]]
# Verification that is not one HTTP request (`verify: {kind: smtp}`): (entry, context) → provider_data;
# raises AppError with the field to blame.
VerifyHook = Callable[["ProviderEntry", "VerifyContext"], dict[str, Any]]
# After an OAuth sign-in or connect: (entry, claims/userinfo, fetch(endpoint name) → JSON) → extra
# provider_data (GitHub's /user/emails, Microsoft Graph /me).
ProfileHook = Callable[["ProviderEntry", Mapping[str, Any], Callable[[str], Any]], dict[str, Any]]


@dataclass(frozen=True)
class Hook:
    description: str
    validate: ValidateHook | None = None
    after_verify: AfterVerifyHook | None = None
    verify: VerifyHook | None = None
    profile: ProfileHook | None = None


from app.providers.hooks import azure, github, huggingface, smtp  # noqa: E402 - the hook modules use the types above

# The one list.
HOOKS: dict[str, Hook] = {
    "github": Hook("GitHub: the primary verified email from /user/emails", profile=github.profile),
    "azure": Hook("Entra ID: Microsoft Graph /me, tenant and app roles", profile=azure.profile),
    "huggingface": Hook(
        "Hugging Face: whoami-v2 → user, orgs, token role; refuse a token below the required role",
        after_verify=huggingface.after_verify,
    ),
    "smtp": Hook(
        "SMTP: connect, EHLO, STARTTLS, AUTH, NOOP through app/mailer.py; errors on the field to blame",
        validate=smtp.validate,
        verify=smtp.verify,
    ),
}
