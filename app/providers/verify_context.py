"""What a provider hook is given after a connected account was verified (app/connectors/verify.py does the
verifying; a hook only reads this). It lives with the catalog, below the connectors, so hooks import nothing
from the layer that calls them."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from app.providers.types import Which
from app.settings import Settings
from app.vault.secret import Secret

ValuesByScope = Mapping[Which, Mapping[str, Any]]

# draft-ietf-httpapi-ratelimit-headers: `RateLimit: "api";r=0;t=120` (the Hugging Face Hub sends it).
RATELIMIT_T: Final = re.compile(r"(?:^|;)\s*t=(\d+)")
_RATELIMIT_R: Final = re.compile(r"(?:^|;)\s*r=(\d+)")


@dataclass(frozen=True)
class VerifyContext:
    """One verification: the account's and its config's effective values, the secrets being tried, and —
    after an HTTP verification request answered as expected — its JSON body, headers and `verify.keep` picks.

    ``send_test_to``: an address the SMTP hook sends a test mail to after a successful login (optional);
    ``before_send`` runs before that mail goes out (the account's daily send cap).
    """

    values: ValuesByScope
    secrets: Mapping[str, Secret | None]
    settings: Settings
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    kept: Mapping[str, Any] = field(default_factory=dict)
    send_test_to: str | None = None
    before_send: Callable[[], None] | None = None

    def account(self, name: str) -> Any:
        return self.values.get("account", {}).get(name)

    def config(self, name: str) -> Any:
        return self.values.get("config", {}).get(name)


def rate_limit_info(headers: Mapping[str, str]) -> dict[str, Any]:
    """Rate-limit metadata worth keeping: the IETF `RateLimit`/`RateLimit-Policy` pair, `X-RateLimit-*`,
    and Retry-After (header names lower-cased)."""
    info: dict[str, Any] = {}
    current = headers.get("ratelimit")
    if current:
        remaining, reset = _RATELIMIT_R.search(current), RATELIMIT_T.search(current)
        if remaining:
            info["remaining"] = int(remaining.group(1))
        if reset:
            info["reset_seconds"] = int(reset.group(1))
    if headers.get("ratelimit-policy"):
        info["policy"] = headers["ratelimit-policy"][:200]
    for name, value in headers.items():
        if name.startswith("x-ratelimit-"):
            info[name.removeprefix("x-ratelimit-").replace("-", "_")] = value[:100]
    if headers.get("retry-after"):
        info["retry_after"] = headers["retry-after"][:100]
    return info
