"""GitHub: the user's email comes from ``GET /user/emails`` (the primary, verified address).

``/user`` only shows the *public* email, which many users leave blank. ``/user/emails`` needs the
``user:email`` (or ``user``) scope; without it GitHub answers 404 and the identity has no email (sign-in
then needs the "link your account" step). https://docs.github.com/rest/users/emails
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from app.errors import AppError
from app.providers.entries import ProviderEntry


def profile(entry: ProviderEntry, claims: Mapping[str, Any], fetch: Callable[[str], Any]) -> dict[str, Any]:
    data: dict[str, Any] = {"login": claims.get("login"), "github_id": claims.get("id")}
    try:
        emails = fetch("emails")
    except AppError as exc:
        if exc.code != "consent_required":
            raise
        emails = []
    listed = (
        [e for e in emails if isinstance(e, dict) and isinstance(e.get("email"), str)]
        if isinstance(emails, list)
        else []
    )
    verified = [e["email"].lower() for e in listed if e.get("verified") is True]
    primary = next((e["email"].lower() for e in listed if e.get("primary") is True and e.get("verified") is True), None)
    data["verified_emails"] = verified
    # Only the primary verified address speaks for the account; an unverified one proves nothing.
    data["email"] = primary
    data["email_verified"] = True if primary is not None else None
    if isinstance(claims.get("name"), str) and claims["name"]:
        data["name"] = claims["name"]
    return data
