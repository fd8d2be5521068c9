"""Anthropic: ``GET /v1/models`` with ``x-api-key`` and ``anthropic-version``."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from tests.support.vendors.base import (
    RecordedRequest,
    Reply,
    Vendor,
    random_token,
    reason_phrase,
    with_retry_after,
)


@dataclass
class AnthropicKey:
    key: str
    workspace_id: str | None
    organization_id: str
    permission_denied: bool = False


ANTHROPIC_MODELS: tuple[dict[str, Any], ...] = (
    {
        "type": "model",
        "id": "claude-sonnet-4-20250514",
        "display_name": "Claude Sonnet 4",
        "created_at": "2025-05-22T00:00:00Z",
    },
    {
        "type": "model",
        "id": "claude-3-7-sonnet-20250219",
        "display_name": "Claude Sonnet 3.7",
        "created_at": "2025-02-24T00:00:00Z",
    },
    {
        "type": "model",
        "id": "claude-3-5-haiku-20241022",
        "display_name": "Claude Haiku 3.5",
        "created_at": "2024-10-22T00:00:00Z",
    },
)


class Anthropic(Vendor):
    """``GET /v1/models`` with ``x-api-key`` and ``anthropic-version`` (paginated: ``limit``, ``after_id``,
    ``before_id``). The app's base URL is :attr:`url`."""

    name = "anthropic"
    server_header = "cloudflare"
    VERSIONS: ClassVar[tuple[str, ...]] = ("2023-01-01", "2023-06-01")
    ERROR_TYPES: ClassVar[dict[int, str]] = {
        400: "invalid_request_error",
        401: "authentication_error",
        402: "billing_error",
        403: "permission_error",
        404: "not_found_error",
        405: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        500: "api_error",
        503: "overloaded_error",
        504: "timeout_error",
        529: "overloaded_error",
    }

    def __init__(self, *, models: Sequence[Mapping[str, Any]] = ANTHROPIC_MODELS, host: str = "127.0.0.1") -> None:
        super().__init__(host=host)
        self.models = [dict(m) for m in models]
        self.keys: dict[str, AnthropicKey] = {}
        self.route("GET", r"/v1/models", self._list)
        self.route("GET", r"/v1/models/(?P<model>[^/]+)", self._get)

    def add_key(
        self,
        key: str | None = None,
        *,
        workspace_id: str | None = None,
        organization_id: str | None = None,
        permission_denied: bool = False,
    ) -> str:
        """Register a key (a new ``sk-ant-api03-…`` one by default). ``permission_denied`` keys get a 403."""
        key = key or random_token("sk-ant-api03-", 86) + "AA"
        with self._lock:
            self.keys[key] = AnthropicKey(key, workspace_id, organization_id or str(uuid.uuid4()), permission_denied)
        return key

    def revoke_key(self, key: str) -> None:
        with self._lock:
            self.keys.pop(key, None)

    def _error(self, status: int, message: str, type_: str | None = None) -> Reply:
        request_id = "req_" + random_token("", 24)
        body = {
            "type": "error",
            "error": {"type": type_ or self.ERROR_TYPES.get(status, "api_error"), "message": message},
            "request_id": request_id,
        }
        return Reply.json(status, body, [("request-id", request_id)])

    def error_reply(self, status: int, req: RecordedRequest, *, retry_after: int | str | None = None) -> Reply:
        messages = {
            401: "invalid x-api-key",
            403: "Your API key does not have permission to use the specified resource.",
            404: "Not found",
            405: "Not found",
            429: "Number of requests has exceeded your rate limit. Please try again later.",
            500: "Internal server error",
            503: "Overloaded",
            529: "Overloaded",
        }
        reply = self._error(404 if status == 405 else status, messages.get(status, reason_phrase(status)))
        if status == 429:
            reply.headers += [
                ("anthropic-ratelimit-requests-limit", "50"),
                ("anthropic-ratelimit-requests-remaining", "0"),
            ]
        return with_retry_after(reply, retry_after)

    def _authorize(self, req: RecordedRequest) -> Reply | AnthropicKey:
        key = req.header("x-api-key")
        if not key:
            return self._error(401, "x-api-key header is required")
        version = req.header("anthropic-version")
        if version is None:
            return self._error(400, "anthropic-version: header is required")
        if version not in self.VERSIONS:
            return self._error(400, f'anthropic-version: "{version}" is not a valid version')
        with self._lock:
            registered = self.keys.get(key)
        if registered is None:
            return self._error(401, "invalid x-api-key")
        if registered.permission_denied:
            return self.error_reply(403, req)
        return registered

    def _list(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        auth = self._authorize(req)
        if isinstance(auth, Reply):
            return auth
        try:
            limit = int(req.query.get("limit", "20"))
        except ValueError:
            return self._error(400, "limit: Input should be a valid integer")
        if not 1 <= limit <= 1000:
            return self._error(400, "limit: Input should be between 1 and 1000")
        ids = [m["id"] for m in self.models]
        after, before = req.query.get("after_id"), req.query.get("before_id")
        if after is not None and before is not None:
            return self._error(400, "Only one of before_id and after_id may be given")
        if after is not None:
            if after not in ids:
                return self._error(404, f"model: {after}")
            start = ids.index(after) + 1
            page = self.models[start : start + limit]
            has_more = start + limit < len(ids)
        elif before is not None:
            if before not in ids:
                return self._error(404, f"model: {before}")
            end = ids.index(before)
            page = self.models[max(0, end - limit) : end]
            has_more = end - limit > 0
        else:
            page = self.models[:limit]
            has_more = limit < len(ids)
        body = {
            "data": page,
            "has_more": has_more,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
        }
        return Reply.json(200, body, self._ok_headers(auth))

    def _ok_headers(self, key: AnthropicKey) -> list[tuple[str, str]]:
        return [("request-id", "req_" + random_token("", 24)), ("anthropic-organization-id", key.organization_id)]

    def _get(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        auth = self._authorize(req)
        if isinstance(auth, Reply):
            return auth
        for model in self.models:
            if model["id"] == match["model"]:
                return Reply.json(200, model, self._ok_headers(auth))
        return self._error(404, f"model: {match['model']}")
