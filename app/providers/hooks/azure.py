"""Microsoft Entra ID: profile from Microsoft Graph ``GET /v1.0/me`` plus the ID token's tenant and app roles.

Graph's ``mail`` is the mailbox address and is often empty for accounts without Exchange; then the
``userPrincipalName`` (the sign-in name) stands in. Entra does not say an address is verified unless the
app registration adds the optional claim ``xms_edov`` ("email domain owner verified"), so without it the
identity's email counts as unverified and is never linked automatically.
https://learn.microsoft.com/graph/api/user-get · https://learn.microsoft.com/entra/identity-platform/optional-claims-reference
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import urlencode

from app.errors import AppError
from app.providers.entries import ProviderEntry

# The tenant of personal Microsoft accounts: what `consumers` resolves to, and the issuer's tenant for them.
MSA_TENANT_ID: Final = "9188040d-6c67-4c5b-b112-36a304b66dad"
MULTI_TENANT: Final = frozenset({"common", "organizations"})


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def issuer(entry: ProviderEntry, values: Mapping[str, Any]) -> str:
    """Entra's issuer for the configured tenant: ``…/{tenantid}/v2.0`` is what the v2.0 discovery document of
    ``common`` and ``organizations`` publishes (the OAuth core fills it from each token's ``tid``);
    ``consumers`` is the fixed tenant of personal Microsoft accounts."""
    authority = str(values.get("authority") or "https://login.microsoftonline.com").rstrip("/")
    tenant = str(values.get("tenant") or "organizations").lower()
    if tenant in MULTI_TENANT:
        return f"{authority}/{{tenantid}}/v2.0"
    if tenant == "consumers":
        return f"{authority}/{MSA_TENANT_ID}/v2.0"
    return f"{authority}/{tenant}/v2.0"


def admin_consent(entry: ProviderEntry, values: Mapping[str, Any], redirect_uri: str) -> str | None:
    """The v2.0 admin-consent endpoint: an admin grants the registration's permissions for the whole tenant.

    https://learn.microsoft.com/entra/identity-platform/v2-admin-consent — ``{tenant}`` is a tenant ID or
    ``organizations`` ("do not use common": personal accounts cannot consent for a tenant), and ``scope`` is
    ``<resource>/.default`` (the permissions the registration lists). ``consumers`` has no admin: no link.
    """
    tenant = str(values.get("tenant") or "organizations").lower()
    if tenant == "consumers":
        return None
    segment = "organizations" if tenant in MULTI_TENANT else tenant
    authority = str(values.get("authority") or "https://login.microsoftonline.com").rstrip("/")
    graph = str(values.get("graph_url") or "https://graph.microsoft.com").rstrip("/")
    query = urlencode(
        {"client_id": str(values.get("client_id") or ""), "scope": f"{graph}/.default", "redirect_uri": redirect_uri}
    )
    return f"{authority}/{segment}/v2.0/adminconsent?{query}"


def profile(entry: ProviderEntry, claims: Mapping[str, Any], fetch: Callable[[str], Any]) -> dict[str, Any]:
    try:
        me = fetch("graph_me")
    except AppError as exc:
        # Without User.Read Graph answers 403: keep what the ID token says.
        if exc.code != "consent_required":
            raise
        me = {}
    me = me if isinstance(me, dict) else {}
    roles = claims.get("roles")
    data: dict[str, Any] = {
        "oid": _text(claims.get("oid")) or _text(me.get("id")),
        "tenant_id": _text(claims.get("tid")),
        "roles": [r for r in roles if isinstance(r, str)] if isinstance(roles, list) else [],
        "graph": {
            "id": _text(me.get("id")),
            "mail": _text(me.get("mail")),
            "userPrincipalName": _text(me.get("userPrincipalName")),
            "displayName": _text(me.get("displayName")),
        },
    }
    email = (
        _text(me.get("mail"))
        or _text(me.get("userPrincipalName"))
        or _text(claims.get("email"))
        or _text(claims.get("preferred_username"))
    )
    data["email"] = email.lower() if email and "@" in email else None
    data["email_verified"] = True if claims.get("xms_edov") is True and data["email"] else None
    name = _text(me.get("displayName")) or _text(claims.get("name"))
    if name:
        data["name"] = name
    return data
