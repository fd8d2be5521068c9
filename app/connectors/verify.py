"""Connectivity tests for provider configs — the interface `providers test`, `providers apply --test` and
the console's "Test connection" call. The connectors work implements it (HTTP verification through
app/net.py, SMTP EHLO/STARTTLS/AUTH/NOOP, OIDC discovery + JWKS); until then every type answers
``unavailable`` honestly instead of pretending a test passed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, assert_never

from app.errors import ErrorCode
from app.providers.entries import ProviderEntry
from app.providers.types import AuthProviderType
from app.settings import Settings
from app.vault import Secret

TestStatus = Literal["ok", "failed", "unavailable"]

NOT_YET = "no connectivity test for this type yet"


@dataclass(frozen=True)
class ConnectionTest:
    """The outcome: ``ok`` with what was learned, ``failed`` with a taxonomy code (and the field to blame),
    or ``unavailable`` when there is nothing that can be tested."""

    status: TestStatus
    message: str
    code: ErrorCode | None = None
    field: str | None = None
    learned: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def connectivity_test(
    settings: Settings,
    provider: ProviderEntry,
    config: Mapping[str, Any],
    secrets: Mapping[str, Secret | None],
) -> ConnectionTest:
    """Check that a config (effective values + decrypted secrets, not yet necessarily saved) works."""
    match provider.id:
        case AuthProviderType.AMI_CREDENTIALS:
            return ConnectionTest("unavailable", "nothing to test: AMI credentials are built in")
        case AuthProviderType.GOOGLE | AuthProviderType.AZURE_AD | AuthProviderType.GENERIC_OIDC:
            return ConnectionTest("unavailable", f"{NOT_YET} (discovery and JWKS checks come with OAuth)")
        case AuthProviderType.GITHUB:
            return ConnectionTest("unavailable", f"{NOT_YET} (GitHub is checked when an account connects)")
        case (
            AuthProviderType.OPENAI
            | AuthProviderType.ANTHROPIC
            | AuthProviderType.HUGGINGFACE
            | AuthProviderType.GENERIC_API_KEY
        ):
            return ConnectionTest("unavailable", f"{NOT_YET} (API keys are verified per connected account)")
        case AuthProviderType.SMTP:
            return ConnectionTest("unavailable", f"{NOT_YET} (the SMTP connector checks each mailbox account)")
        case _:
            assert_never(provider.id)
