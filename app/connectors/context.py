"""What a provider hook is given when it verifies a connected account (kept free of heavy imports so the
hook modules can use it while the catalog registry is still loading)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.providers.types import Which
from app.settings import Settings
from app.vault.secret import Secret

ValuesByScope = Mapping[Which, Mapping[str, Any]]


@dataclass(frozen=True)
class VerifyContext:
    """One verification: the account's and its config's effective values, the secrets being tried, and —
    after an HTTP verification request answered as expected — its JSON body, headers and `verify.keep` picks.

    ``send_test_to``: an address the SMTP hook sends a test mail to after a successful login (optional).
    """

    values: ValuesByScope
    secrets: Mapping[str, Secret | None]
    settings: Settings
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    kept: Mapping[str, Any] = field(default_factory=dict)
    send_test_to: str | None = None

    def account(self, name: str) -> Any:
        return self.values.get("account", {}).get(name)

    def config(self, name: str) -> Any:
        return self.values.get("config", {}).get(name)
