"""Hugging Face: what `GET /api/whoami-v2` says about a token, and whether its role is enough.

https://huggingface.co/docs/hub/security-tokens — a token's role is ``read``, ``write`` or ``fineGrained``
(per-repository permissions such as ``repo.content.read`` / ``repo.write``). The account's
``required_role`` says what the CMS needs; a token below it fails verification with a hint.
"""

from __future__ import annotations

from typing import Any

from app.errors import AppError
from app.providers.entries import ProviderEntry
from app.providers.verify_context import VerifyContext, rate_limit_info

TOKENS_URL = "https://huggingface.co/settings/tokens"


def _permissions(fine_grained: Any) -> set[str]:
    """Every permission a fine-grained token holds, global or scoped to a repo/org."""
    found: set[str] = set()
    if not isinstance(fine_grained, dict):
        return found
    for item in fine_grained.get("global") or []:
        if isinstance(item, str):
            found.add(item)
    for scoped in fine_grained.get("scoped") or []:
        if isinstance(scoped, dict):
            found.update(p for p in scoped.get("permissions") or [] if isinstance(p, str))
    return found


def _meets(role: str | None, required: str, fine_grained: Any) -> bool:
    if role == "write":
        return True
    if role == "read":
        return required == "read"
    if role == "fineGrained":
        # Any token reads public repositories; writing needs the repo.write permission somewhere.
        return required == "read" or "repo.write" in _permissions(fine_grained)
    return False


def after_verify(entry: ProviderEntry, context: VerifyContext) -> dict[str, Any]:
    """Keep user name, display name, orgs and token role/name; refuse a token below the required role."""
    data: dict[str, Any] = dict(context.kept)
    body = context.json if isinstance(context.json, dict) else {}
    access = (body.get("auth") or {}).get("accessToken") or {}
    role = access.get("role") if isinstance(access.get("role"), str) else None
    required = str(context.account("required_role") or "read")
    limits = rate_limit_info(context.headers)
    if limits:
        data["rate_limit"] = limits
    if not _meets(role, required, access.get("fineGrained")):
        shown = {"fineGrained": "fine-grained"}.get(role or "", role or "unknown")
        detail = "it has no repo.write permission" if role == "fineGrained" else f"its role is {shown}"
        raise AppError(
            "permission_denied",
            f"This token is not enough: this account requires a {required} token, and {detail}.",
            f"Create a {required} token (or a fine-grained one with the permissions needed) at {TOKENS_URL}, "
            "or lower the account's required role.",
            fields={"api_token": f"The token's role is {shown}; this account requires {required}."},
        )
    return data
