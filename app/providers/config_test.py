"""What testing a provider config on its own found (`providers test`, `providers apply --test`, the API's
test endpoint): the connectors run the test (app/connectors/verify.py); the catalog's services take it as a
port, so they need not import the layer above them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from app.errors import ErrorCode
from app.providers.entries import ProviderEntry
from app.vault import Secret

TestStatus = Literal["ok", "failed", "unavailable"]


@dataclass(frozen=True)
class ConnectionTest:
    """The outcome: ``ok`` with what was learned, ``failed`` with a taxonomy code (and the field to blame),
    or ``unavailable`` when there is nothing that can be tested."""

    status: TestStatus
    message: str
    code: ErrorCode | None = None
    field: str | None = None
    learned: Mapping[str, Any] = dataclasses.field(default_factory=dict)


# (entry, effective config values, decrypted secrets) → what the test found.
ConfigTest = Callable[[ProviderEntry, Mapping[str, Any], Mapping[str, Secret | None]], ConnectionTest]
