"""A plain RFC 7009 revocation request for tests that talk to a provider without a catalog entry (the app
builds its requests from the catalog's `revoke`, whose defaults are exactly this)."""

from __future__ import annotations

from typing import Literal

from app.oauth import ClientCredentials, ProviderMetadata
from app.oauth.revocation import RevocationRequest


def rfc7009(
    metadata: ProviderMetadata,
    credentials: ClientCredentials,
    token: str,
    token_type_hint: Literal["access_token", "refresh_token"] | None = None,
) -> RevocationRequest:
    """RFC 7009 §2.1: POST token (+ token_type_hint) to the revocation endpoint, authenticated as the client."""
    body = {"token": token, **({"token_type_hint": token_type_hint} if token_type_hint else {})}
    return RevocationRequest(url=metadata.revocation_endpoint or "", body=body, client=credentials)
