"""Small code where data is not enough, registered in ONE explicit map (allauth's import-magic registry
is the cautionary tale). An entry names its hooks in `hooks:`; the registry refuses a name missing here.

To add one: write `app/providers/hooks/<name>.py` with the functions (tens of lines), then add
`"<name>": Hook(...)` to HOOKS below with a direct import. Every hook point is optional. Hooks import only
the catalog's own modules: the connectors and the OAuth code call them, never the other way round.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from app.providers.entries import ProviderEntry
from app.providers.hooks import azure, github, huggingface, smtp
from app.providers.types import Which
from app.providers.verify_context import VerifyContext

# Cross-field rules that `visible_when`/`required` cannot say: (entry, which, clean values) → {field: message}.
ValidateHook = Callable[[ProviderEntry, Which, Mapping[str, Any]], Mapping[str, str]]
# After a successful verification request: (entry, context with the response JSON and headers, the values
# picked by `verify.keep` and the account's values) → the provider_data to store; may raise AppError (e.g. a
# HuggingFace token whose role is below the account's required role).
AfterVerifyHook = Callable[[ProviderEntry, VerifyContext], dict[str, Any]]
# After an OAuth sign-in or connect: (entry, claims/userinfo, fetch(endpoint name) → JSON) → extra
# provider_data (GitHub's /user/emails, Microsoft Graph /me).
ProfileHook = Callable[[ProviderEntry, Mapping[str, Any], Callable[[str], Any]], dict[str, Any]]
# The issuer ID tokens must carry, when a template cannot say it: (entry, effective config values) → issuer
# (Entra ID's multi-tenant `…/{tenantid}/v2.0`, filled in from each token's tid).
IssuerHook = Callable[[ProviderEntry, Mapping[str, Any]], str]
# The provider's admin-consent URL for this config, when it has one: (entry, effective config values, the app's
# redirect URI) → the URL without ``state`` (the console adds it), or None where no admin can consent (Entra
# ID's ``/adminconsent`` for an organization tenant; not for personal accounts).
AdminConsentHook = Callable[[ProviderEntry, Mapping[str, Any], str], str | None]


@dataclass(frozen=True)
class Hook:
    description: str
    validate: ValidateHook | None = None
    after_verify: AfterVerifyHook | None = None
    profile: ProfileHook | None = None
    issuer: IssuerHook | None = None
    admin_consent: AdminConsentHook | None = None


# The one list.
HOOKS: dict[str, Hook] = {
    "github": Hook("GitHub: the primary verified email from /user/emails", profile=github.profile),
    "azure": Hook(
        "Entra ID: Microsoft Graph /me, tenant and app roles; the issuer of common/organizations/consumers; "
        "the tenant-wide admin-consent link",
        profile=azure.profile,
        issuer=azure.issuer,
        admin_consent=azure.admin_consent,
    ),
    "huggingface": Hook(
        "Hugging Face: whoami-v2 → user, orgs, token role; refuse a token below the required role",
        after_verify=huggingface.after_verify,
    ),
    "smtp": Hook("SMTP: a password login needs a user name, XOAUTH2 a mailbox", validate=smtp.validate),
}
