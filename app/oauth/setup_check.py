"""The OAuth setup page's "Test connection" (and `providers test` for OIDC configs): fetch discovery
(uncached) and the signing keys with a config's values, and report what was found. No database, no Flask.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from joserfc.jwk import KeySet

from app.errors import N_, AppError
from app.net import OutboundClient
from app.oauth.discovery import ProviderMetadata, discover, fetch_jwks
from app.oauth.provider import provider_from_values
from app.providers.entries import ProviderEntry
from app.vault import Secret

__all__ = ["ConnectionReport", "test_connection"]


@dataclass(frozen=True)
class ConnectionReport:
    """What "Test connection" found: ``ok`` and ``(label, value)`` findings, or the failure. ``tested`` is False
    when the type has nothing the test could fetch (its catalog entry's verification is not ``discovery``):
    the findings are then only the configured endpoints, and nothing was contacted."""

    ok: bool
    findings: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()
    error: AppError | None = None
    tested: bool = True


def test_connection(
    client: OutboundClient,
    entry: ProviderEntry,
    stored: Mapping[str, Any],
    secrets: Mapping[str, Secret | None],
    *,
    config_id: int = 0,
) -> ConnectionReport:
    """Fetch discovery (uncached) and the JWKS and report what was found (a plain OAuth 2.0 provider may have
    neither); the entry's notes say what the findings cannot."""
    fetched: dict[str, ProviderMetadata] = {}

    def uncached(issuer: str, discovery_url: str | None) -> ProviderMetadata:
        fetched["metadata"] = discover(client, issuer, discovery_url=discovery_url)
        return fetched["metadata"]

    try:
        provider = provider_from_values(entry, config_id, "", stored, secrets, discover_with=uncached, keys=None)
        keys: KeySet | None = None
        if provider.metadata.jwks_uri is not None:
            keys = fetch_jwks(client, provider.metadata.jwks_uri)
    except AppError as exc:
        return ConnectionReport(ok=False, error=exc)
    m = provider.metadata
    # Labels and words are marked here and translated where the setup page shows them; values are data.
    findings: list[tuple[str, str]] = []
    if "metadata" in fetched:
        findings.append((N_("Discovery"), N_("found")))
    findings.append((N_("Issuer"), m.issuer or N_("none (plain OAuth 2.0: no ID tokens)")))
    findings.append((N_("Authorization endpoint"), m.authorization_endpoint))
    findings.append((N_("Token endpoint"), m.token_endpoint))
    findings.append((N_("Userinfo endpoint"), m.userinfo_endpoint or N_("none")))
    if m.jwks_uri is not None:
        kids = [str(k.kid) for k in keys] if keys is not None else []
        jwks = N_(
            "%(uri)s — %(count)s signing key(s): %(kids)s", uri=m.jwks_uri, count=len(kids), kids=", ".join(kids) or "—"
        )
        findings.append(("JWKS", jwks))
    if provider.id_token:
        findings.append((N_("ID-token algorithms"), ", ".join(m.id_token_signing_alg_values_supported)))
    if provider.pkce:
        methods = m.code_challenge_methods_supported
        findings.append(("PKCE S256", N_("supported") if not methods or "S256" in methods else N_("NOT listed")))
    findings.append((N_("Revocation"), provider.revocation_url() or N_("none — tokens expire on their own")))
    findings.append((N_("Device flow"), m.device_authorization_endpoint or N_("not offered")))
    notes: list[str] = []
    if m.issuer_is_template:
        notes.append(N_("Multi-tenant: each ID token's issuer is checked against its own tenant (tid)."))
    notes.extend(entry.notes.connection_test)
    if entry.notes.tokens:
        notes.append(entry.notes.tokens)
    # A plain OAuth 2.0 provider (no discovery, no signing keys) has nothing to fetch without a user: say so,
    # rather than report an answer nobody gave.
    tested = entry.capabilities.verify == "discovery"
    return ConnectionReport(ok=tested, findings=tuple(findings), notes=tuple(notes), tested=tested)
