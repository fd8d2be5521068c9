"""Hugging Face: ``GET /api/whoami-v2`` with a user access token (fine-grained or not)."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.support.vendors.base import (
    RecordedRequest,
    Reply,
    Vendor,
    iso_time,
    random_token,
    reason_phrase,
    with_retry_after,
)


@dataclass
class HFUser:
    name: str
    fullname: str
    email: str | None
    orgs: list[tuple[str, str]]
    id: str = field(default_factory=lambda: secrets.token_hex(12))
    is_pro: bool = False


@dataclass
class HFToken:
    token: str
    user: str
    display_name: str
    role: str
    fine_grained: dict[str, Any] | None
    created_at: str


class HuggingFace(Vendor):
    """``GET /api/whoami-v2`` with ``Authorization: Bearer hf_…``. The app's base URL is :attr:`url`.

    ``set_rate_limit(remaining, reset)`` adds the Hub's documented ``RateLimit``/``RateLimit-Policy`` headers
    (IETF draft v9: ``"api";r=<remaining>;t=<seconds to reset>``) to every response, and ``extra_headers``
    adds any others (e.g. ``X-RateLimit-*``).
    """

    name = "huggingface"
    server_header = "huggingface"

    def __init__(self, *, host: str = "127.0.0.1") -> None:
        super().__init__(host=host)
        self.users: dict[str, HFUser] = {}
        self.tokens: dict[str, HFToken] = {}
        self.rate_limit: tuple[int, int, int, int] | None = None
        self.extra_headers: dict[str, str] = {}
        self.route("GET", r"/api/whoami-v2", self._whoami)

    def add_user(
        self,
        name: str,
        *,
        fullname: str | None = None,
        email: str | None = None,
        orgs: Sequence[tuple[str, str]] = (),
        is_pro: bool = False,
    ) -> HFUser:
        """A Hub user; ``orgs`` is ``[(org_name, roleInOrg)]`` with roles like ``admin``, ``write``, ``read``."""
        user = HFUser(name, fullname or name.title(), email or f"{name}@example.com", list(orgs), is_pro=is_pro)
        with self._lock:
            self.users[name] = user
        return user

    def add_token(
        self,
        user: str = "alice",
        *,
        role: str = "read",
        display_name: str = "ami-auth",
        token: str | None = None,
        fine_grained: Mapping[str, Any] | None = None,
    ) -> str:
        """A token of ``user`` (created if unknown) with ``role`` ``read``, ``write`` or ``fineGrained``."""
        if role not in ("read", "write", "fineGrained"):
            raise ValueError(f"unknown HuggingFace token role {role!r}")
        with self._lock:
            if user not in self.users:
                self.add_user(user)
            token = token or random_token("hf_", 34)
            grained = dict(fine_grained) if fine_grained is not None else None
            if role == "fineGrained" and grained is None:
                grained = {"canReadGatedRepos": False, "global": ["inference.serverless.write"], "scoped": []}
            self.tokens[token] = HFToken(token, user, display_name, role, grained, iso_time(self.now()))
        return token

    def revoke_token(self, token: str) -> None:
        with self._lock:
            self.tokens.pop(token, None)

    def set_rate_limit(self, remaining: int, reset: int, *, quota: int = 1000, window: int = 300) -> None:
        self.rate_limit = (remaining, reset, quota, window)

    def _headers(self) -> list[tuple[str, str]]:
        headers = [("x-request-id", "Root=1-" + secrets.token_hex(12))]
        if self.rate_limit is not None:
            remaining, reset, quota, window = self.rate_limit
            headers += [
                ("RateLimit", f'"api";r={remaining};t={reset}'),
                ("RateLimit-Policy", f'"fixed window";"api";q={quota};w={window}'),
            ]
        headers += list(self.extra_headers.items())
        return headers

    def _error(self, status: int, message: str) -> Reply:
        return Reply.json(status, {"error": message}, [*self._headers(), ("X-Error-Message", message)])

    def error_reply(self, status: int, req: RecordedRequest, *, retry_after: int | str | None = None) -> Reply:
        messages = {
            401: "Invalid credentials in Authorization header",
            403: "You don't have the rights to perform this action",
            404: "Sorry, we can't find the page you are looking for.",
            429: "You have exceeded our rate limit for api requests. Please retry later.",
            500: "Internal Error - We're working hard to fix this as soon as possible!",
        }
        reply = self._error(status, messages.get(status, reason_phrase(status)))
        if status == 429 and self.rate_limit is None:
            reset = int(retry_after) if isinstance(retry_after, int) else 300
            reply.headers += [
                ("RateLimit", f'"api";r=0;t={reset}'),
                ("RateLimit-Policy", '"fixed window";"api";q=1000;w=300'),
            ]
        return with_retry_after(reply, retry_after)

    def _whoami(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        if req.header("authorization") is None:
            return self._error(401, "Invalid username or password.")
        token = req.bearer()
        with self._lock:
            found = self.tokens.get(token or "")
            user = self.users.get(found.user) if found else None
        if found is None or user is None:
            return self._error(401, "Invalid credentials in Authorization header")
        access: dict[str, Any] = {"displayName": found.display_name, "role": found.role, "createdAt": found.created_at}
        if found.fine_grained is not None:
            access["fineGrained"] = found.fine_grained
        body = {
            "type": "user",
            "id": user.id,
            "name": user.name,
            "fullname": user.fullname,
            "email": user.email,
            "emailVerified": True,
            "canPay": False,
            "periodEnd": None,
            "isPro": user.is_pro,
            "avatarUrl": f"/avatars/{hashlib.md5(user.name.encode()).hexdigest()}.svg",
            "orgs": [
                {
                    "type": "org",
                    "id": hashlib.sha1(org.encode()).hexdigest()[:24],
                    "name": org,
                    "fullname": org.title(),
                    "email": None,
                    "canPay": False,
                    "periodEnd": None,
                    "avatarUrl": f"https://cdn-avatars.huggingface.co/{org}.png",
                    "roleInOrg": role,
                    "isEnterprise": False,
                }
                for org, role in user.orgs
            ],
            "auth": {"type": "access_token", "accessToken": access},
        }
        return Reply.json(200, body, self._headers())
