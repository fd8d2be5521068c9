"""SMTP: the cross-field rules of an account's login that `visible_when`/`required` cannot say.

Talking to the server (connect, EHLO, STARTTLS, AUTH, NOOP) is the connectors' verification of
`verify: {kind: smtp}` (app/connectors/smtp_login.py), not a hook.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.providers.entries import ProviderEntry
from app.providers.types import Which


def validate(entry: ProviderEntry, which: Which, clean: Mapping[str, Any]) -> Mapping[str, str]:
    """A password login needs a user name (a relay without login leaves both blank); XOAUTH2 always does."""
    if which != "account":
        return {}
    if clean.get("auth_mechanism") in ("PLAIN", "LOGIN") and clean.get("password") and not clean.get("username"):
        return {"username": "Enter the user name that goes with the password."}
    if clean.get("auth_mechanism") == "XOAUTH2" and not clean.get("username"):
        return {"username": "Enter the mailbox the OAuth account's token opens (XOAUTH2 sends it)."}
    return {}
