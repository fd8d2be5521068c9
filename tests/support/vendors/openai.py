"""OpenAI: ``GET /v1/models`` with ``Authorization: Bearer``.

OpenAI answers a wrong ``OpenAI-Organization``/``OpenAI-Project`` header with **401**
``mismatched_organization`` / ``mismatched_project`` (not 403); its 403 is reserved for blocked regions.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tests.support.vendors.base import (
    RecordedRequest,
    Reply,
    Vendor,
    random_token,
    reason_phrase,
    with_retry_after,
)


@dataclass
class OpenAIKey:
    key: str
    organization: str
    projects: tuple[str, ...]
    region_blocked: bool = False


OPENAI_MODELS: tuple[dict[str, Any], ...] = (
    {"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"},
    {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"},
    {"id": "text-embedding-3-small", "object": "model", "created": 1705948997, "owned_by": "system"},
    {"id": "whisper-1", "object": "model", "created": 1677532384, "owned_by": "openai-internal"},
)


class OpenAI(Vendor):
    """``GET /v1/models`` (and ``/v1/models/{id}``) with ``Authorization: Bearer``.

    The app's ``base_url`` is :attr:`url` (the stand-in serves ``/v1/...`` under it). Keys belong to one
    organization and a set of projects; the optional ``OpenAI-Organization``/``OpenAI-Project`` headers must
    match them, as at OpenAI.
    """

    name = "openai"
    server_header = "cloudflare"
    NO_KEY = (
        "You didn't provide an API key. You need to provide your API key in an Authorization header using "
        "Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if "
        "you're accessing the API from your browser and are prompted for a username and password. You can "
        "obtain an API key from https://platform.openai.com/account/api-keys."
    )

    def __init__(self, *, models: Sequence[Mapping[str, Any]] = OPENAI_MODELS, host: str = "127.0.0.1") -> None:
        super().__init__(host=host)
        self.models = [dict(m) for m in models]
        self.keys: dict[str, OpenAIKey] = {}
        self.route("GET", r"/v1/models", self._list)
        self.route("GET", r"/v1/models/(?P<model>[^/]+)", self._get)

    def add_key(
        self,
        key: str | None = None,
        *,
        organization: str | None = None,
        projects: Sequence[str] | None = None,
        region_blocked: bool = False,
    ) -> str:
        """Register a key (a new ``sk-proj-…`` one by default) and return it."""
        key = key or random_token("sk-proj-", 48)
        with self._lock:
            self.keys[key] = OpenAIKey(
                key,
                organization or random_token("org-", 24),
                tuple(projects) if projects is not None else (random_token("proj_", 24),),
                region_blocked,
            )
        return key

    def revoke_key(self, key: str) -> None:
        with self._lock:
            self.keys.pop(key, None)

    @staticmethod
    def mask(key: str) -> str:
        """The key as OpenAI quotes it back: known prefix, stars, last four characters."""
        prefix = next((p for p in ("sk-proj-", "sk-svcacct-", "sk-admin-", "sk-") if key.startswith(p)), "")
        if len(key) <= len(prefix) + 4:
            return key[:2] + "*" * max(0, len(key) - 2)
        return prefix + "*" * (len(key) - len(prefix) - 4) + key[-4:]

    def _error(self, status: int, message: str, type_: str, code: str | None, param: str | None = None) -> Reply:
        body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
        return Reply.json(status, body, self._common_headers())

    def _common_headers(self) -> list[tuple[str, str]]:
        return [("openai-version", "2020-10-01"), ("x-request-id", "req_" + secrets.token_hex(16))]

    def error_reply(self, status: int, req: RecordedRequest, *, retry_after: int | str | None = None) -> Reply:
        if status == 401:
            key = req.bearer()
            reply = (
                self._error(401, self._incorrect_key(key), "invalid_request_error", "invalid_api_key")
                if key
                else self._error(401, self.NO_KEY, "invalid_request_error", None)
            )
        elif status == 403:
            reply = self._error(
                403,
                "Country, region, or territory not supported",
                "request_forbidden",
                "unsupported_country_region_territory",
            )
        elif status in (404, 405):
            reply = self._error(404, f"Invalid URL ({req.method} {req.path})", "invalid_request_error", None)
        elif status == 429:
            reply = self._error(
                429,
                "Rate limit reached for requests per min (RPM): Limit 500, Used 500, Requested 1. "
                "Please try again in 120ms.",
                "requests",
                "rate_limit_exceeded",
            )
            reply.headers += [("x-ratelimit-limit-requests", "500"), ("x-ratelimit-remaining-requests", "0")]
        elif status == 503:
            reply = self._error(503, "The engine is currently overloaded, please try again later", "server_error", None)
        elif status >= 500:
            reply = self._error(
                status, "The server had an error while processing your request. Sorry about that!", "server_error", None
            )
        else:
            reply = self._error(status, reason_phrase(status), "invalid_request_error", None)
        return with_retry_after(reply, retry_after)

    def _incorrect_key(self, key: str | None) -> str:
        return (
            f"Incorrect API key provided: {self.mask(key or '')}. "
            "You can find your API key at https://platform.openai.com/account/api-keys."
        )

    def _authorize(self, req: RecordedRequest) -> Reply | None:
        key = req.bearer()
        if key is None:
            return self._error(401, self.NO_KEY, "invalid_request_error", None)
        with self._lock:
            registered = self.keys.get(key)
        if registered is None:
            return self._error(401, self._incorrect_key(key), "invalid_request_error", "invalid_api_key")
        org = req.header("OpenAI-Organization")
        if org is not None and org != registered.organization:
            return self._error(
                401,
                "OpenAI-Organization header should match organization for API key",
                "invalid_request_error",
                "mismatched_organization",
            )
        project = req.header("OpenAI-Project")
        if project is not None and project not in registered.projects:
            return self._error(
                401,
                "OpenAI-Project header should match project for API key",
                "invalid_request_error",
                "mismatched_project",
            )
        if registered.region_blocked:
            return self.error_reply(403, req)
        return None

    def _list(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        refused = self._authorize(req)
        if refused is not None:
            return refused
        return Reply.json(200, {"object": "list", "data": self.models}, self._common_headers())

    def _get(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        refused = self._authorize(req)
        if refused is not None:
            return refused
        for model in self.models:
            if model["id"] == match["model"]:
                return Reply.json(200, model, self._common_headers())
        return self._error(
            404, f"The model '{match['model']}' does not exist", "invalid_request_error", "model_not_found", "model"
        )
