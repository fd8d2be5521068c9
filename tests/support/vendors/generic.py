"""A generic API-key service: checks one credential the way it is configured (bearer, header, query) and
echoes the request."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

from tests.support.vendors.base import (
    RecordedRequest,
    Reply,
    Vendor,
    random_token,
    reason_phrase,
    with_retry_after,
)


class GenericApi(Vendor):
    """An API that checks one credential the way it is configured and echoes the request.

    ``auth_type``: ``bearer`` (``Authorization: Bearer <key>``), ``header`` (``<header_name>: <key>``),
    ``basic`` (``Authorization: Basic`` with key:secret) or ``query`` (``?<query_param>=<key>``). Every
    path (or only ``paths``, if given) answers 200 ``{"ok": true, "method", "path", "query", "key_label"}``
    — never echoing the credential — or 401 ``{"error": "unauthorized", "message": …}``.
    """

    name = "generic"
    AUTH_TYPES: ClassVar[tuple[str, ...]] = ("bearer", "header", "basic", "query")

    def __init__(
        self,
        *,
        auth_type: str = "bearer",
        header_name: str = "X-API-Key",
        query_param: str = "api_key",
        paths: Sequence[str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        if auth_type not in self.AUTH_TYPES:
            raise ValueError(f"auth_type must be one of {self.AUTH_TYPES}")
        super().__init__(host=host)
        self.auth_type = auth_type
        self.header_name = header_name
        self.query_param = query_param
        self.paths = tuple(paths) if paths is not None else None
        self.keys: dict[tuple[str, str | None], str] = {}
        for method in ("GET", "POST", "HEAD", "PUT", "DELETE"):
            self.route(method, r"/.*", self._echo)

    def add_key(self, key: str | None = None, *, secret: str | None = None, label: str = "default") -> str:
        """Accept ``key`` (with ``secret`` as the Basic password when ``auth_type='basic'``)."""
        key = key or random_token("gk_", 32)
        with self._lock:
            self.keys[(key, secret)] = label
        return key

    def error_reply(self, status: int, req: RecordedRequest, *, retry_after: int | str | None = None) -> Reply:
        codes = {401: "unauthorized", 403: "forbidden", 404: "not_found", 429: "rate_limited"}
        reply = Reply.json(status, {"error": codes.get(status, "error"), "message": reason_phrase(status)})
        if status == 401:
            reply.headers.append(self._challenge())
        return with_retry_after(reply, retry_after)

    def _challenge(self) -> tuple[str, str]:
        scheme = "Basic" if self.auth_type == "basic" else "Bearer"
        return ("WWW-Authenticate", f'{scheme} realm="generic"')

    def _credential(self, req: RecordedRequest) -> tuple[str, str | None] | None:
        if self.auth_type == "bearer":
            key = req.bearer()
            return (key, None) if key else None
        if self.auth_type == "header":
            value = req.header(self.header_name)
            return (value, None) if value else None
        if self.auth_type == "basic":
            pair = req.basic()
            return (pair[0], pair[1] or None) if pair else None
        value = req.query.get(self.query_param)
        return (value, None) if value else None

    def _echo(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        if self.paths is not None and req.path not in self.paths:
            return Reply.json(404, {"error": "not_found", "message": "Not Found"})
        credential = self._credential(req)
        with self._lock:
            label = self.keys.get(credential) if credential else None
        if label is None:
            message = "Missing credentials" if credential is None else "Invalid credentials"
            return Reply.json(401, {"error": "unauthorized", "message": message}, [self._challenge()])
        query = {k: v for k, v in req.query.items() if not (self.auth_type == "query" and k == self.query_param)}
        return Reply.json(200, {"ok": True, "method": req.method, "path": req.path, "query": query, "key_label": label})
