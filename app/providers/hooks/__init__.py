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
    from app.providers.entries import ProviderEntry
    from app.providers.types import Which

# Cross-field rules that `visible_when`/`required` cannot say: (entry, which, clean values) → {field: message}.
ValidateHook = Callable[["ProviderEntry", "Which", Mapping[str, Any]], Mapping[str, str]]
# After a successful verification request: (entry, response JSON, values picked by `verify.keep`) →
# the provider_data to store; may raise AppError (e.g. a HuggingFace token whose role is too low).
AfterVerifyHook = Callable[["ProviderEntry", Any, dict[str, Any]], dict[str, Any]]
# After an OAuth sign-in or connect: (entry, claims/userinfo, fetch(endpoint name) → JSON) → extra
# provider_data (GitHub's /user/emails, Microsoft Graph /me).
ProfileHook = Callable[["ProviderEntry", Mapping[str, Any], Callable[[str], Any]], dict[str, Any]]


@dataclass(frozen=True)
class Hook:
    description: str
    validate: ValidateHook | None = None
    after_verify: AfterVerifyHook | None = None
    profile: ProfileHook | None = None


# The one list. Empty until the connectors and OAuth work registers github, azure, huggingface and smtp.
HOOKS: dict[str, Hook] = {}
