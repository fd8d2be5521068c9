"""Revoking a token or a credential at the provider: the one implementation (RFC 7009 and its vendor variants).

A :class:`RevocationRequest` is what to send, already rendered: RFC 7009 by default (``POST`` a form with
``token`` and ``token_type_hint``, the client authenticated as at the token endpoint, §2.1), or what a
catalog entry's `revoke` says instead (GitHub: ``DELETE`` a JSON body with HTTP Basic; an API-key vendor:
a bearer header). :func:`revoke` sends it through :class:`app.net.OutboundClient` and reads the answer.
No database, no Flask: the callers render the request from the catalog and decide what to delete.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, urlencode

from app.errors import N_, AppError
from app.net import OutboundClient, retry_after
from app.oauth.tokens import ClientCredentials

__all__ = ["RevocationRequest", "RevokeResult", "revoke"]

RevokeResult = Literal["revoked", "already_invalid"]


@dataclass(frozen=True)
class RevocationRequest:
    """``client``: authenticate as the registered client — for a form body exactly as at the token endpoint
    (RFC 7009 §2.1), for a JSON body with HTTP Basic. ``headers`` carry anything else (a bearer token)."""

    url: str
    body: Mapping[str, str] = field(default_factory=dict)
    method: Literal["POST", "DELETE"] = "POST"
    body_format: Literal["form", "json"] = "form"
    client: ClientCredentials | None = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    expect_status: tuple[int, ...] = (200,)


def _basic(client_id: str, secret: str) -> str:
    # RFC 6749 §2.3.1 form-encodes both before Basic (identical to RFC 7617 for plain ids and secrets).
    raw = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    return "Basic " + base64.b64encode(raw.encode()).decode("ascii")


def revoke(client: OutboundClient, request: RevocationRequest) -> RevokeResult:
    """Send the request; ``revoked``, or ``already_invalid`` for a token the provider no longer knows (RFC
    7009 §2.2 answers 200 for those, Google 400 ``invalid_token``, GitHub 404). Raises ``invalid_config``
    when there is no URL (nothing is sent), ``rate_limited``, ``provider_unreachable`` or ``invalid_config``
    (the client credentials were refused) otherwise."""
    if not request.url:
        raise AppError(
            "invalid_config",
            N_("The provider has no revocation endpoint"),
            N_("Tokens expire on their own; remove the account locally"),
        )
    body = {k: v for k, v in request.body.items() if v}
    headers: dict[str, str] = {"Accept": "application/json", **request.headers}
    if request.body_format == "json":
        headers["Content-Type"] = "application/json"
        content = json.dumps(body)
    else:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        content = urlencode(body)
    if request.client is not None:
        if request.body_format == "form":
            headers, content = request.client.authenticate(request.url, headers, content)
        else:
            headers["Authorization"] = _basic(request.client.client_id, request.client.client_secret or "")
    response = client.request(request.method, request.url, headers=headers, content=content.encode())
    status = response.status_code
    if status in request.expect_status:
        return "revoked"
    error: object = None
    try:
        parsed = response.json()
        error = parsed.get("error") if isinstance(parsed, dict) else None
    except ValueError:
        pass
    # Google answers 400 invalid_token for a token it already revoked; GitHub 404 for one it no longer knows.
    if (status == 400 and error in ("invalid_token", "invalid_grant")) or (
        status == 404 and request.method == "DELETE"
    ):
        return "already_invalid"
    wait = retry_after(response)
    seconds = round(wait) if wait is not None else None
    if status == 429:
        raise AppError("rate_limited", N_("The provider rate-limited the revocation"), retry_after=seconds)
    if status >= 500:
        raise AppError(
            "provider_unreachable",
            N_("The provider failed to revoke the token (HTTP %(status)s)", status=status),
            retry_after=seconds,
        )
    if status == 401:
        raise AppError(
            "invalid_config",
            N_("The provider rejected the client credentials when revoking"),
            N_("Check the client ID and secret in the provider configuration"),
        )
    raise AppError("provider_unreachable", N_("The provider refused the revocation (HTTP %(status)s)", status=status))
