"""``/api/account-manager/accounts/<id>/proxy/<path>``: call a connected account's provider API through AMI Auth.

The rules (where a request may go, which headers pass, what a 401 means) are ``app.connectors.proxy``'s; this
module moves the bytes, both ways, without holding a body in memory:

* the caller's body is read in chunks as the upstream takes them (at most ``AMI_AUTH_PROXY_MAX_REQUEST_BYTES``:
  413 when ``Content-Length`` says more, the call cut when a chunked body goes over);
* the upstream's answer is passed back chunk by chunk as it arrives (server-sent events included), at most
  ``AMI_AUTH_PROXY_MAX_RESPONSE_BYTES``, with ``X-Accel-Buffering: no`` so nginx does not hold it back;
* one attempt, no redirects followed (:meth:`app.net.OutboundClient.open_stream`); a full outbound pool is
  503 with ``Retry-After`` after ``AMI_AUTH_PROXY_POOL_TIMEOUT`` seconds;
* a caller that leaves is noticed even before the first byte comes back (``app.http.departure``) and the
  upstream connection is cut; a request whose caller left while it waited for a worker thread is not sent.

Every call is audited once (``account.proxy``: the token, the account, method, path without the query,
status, bytes each way, milliseconds; never a header value or a body), when it ends. A call the upstream answered
hands its event to the process's audit writer once the caller has the whole answer
(:func:`app.audit_batch.append` with ``wait=False``: batched with the other calls' events, one chain lock per
batch, committed within a round trip or two, and written before the worker exits), so the thread is free for the
caller's next request at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from flask import Flask, current_app, request
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response

from app import audit, audit_batch
from app.api.registry import document
from app.api.security import api_audit_ctx, api_auth, api_blueprint
from app.api.token_api import check_limits
from app.connectors import proxy as rules
from app.errors import AppError
from app.extensions import db_session, get_cipher, get_database, get_settings
from app.http import departure
from app.http.streaming import streams_body
from app.models.base import ID_MAX
from app.net import ProviderUnreachable, StreamHandle, Upstream, get_client
from app.oauth.runtime import runtime

bp = api_blueprint("api_proxy", __name__)

PREFIX: Final = "/account-manager/accounts/<int:account_id>/proxy/<path:path>"
CHUNK: Final = 64 * 1024
BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_PATH: Final = {
    "account_id": ({"type": "integer", "minimum": 1, "maximum": ID_MAX}, "The connected account's id."),
    "path": (
        {"type": "string", "pattern": "^[A-Za-z0-9._~/:@!$&'()*+,;=-]+$", "maxLength": rules.PATH_MAX},
        "The path under the account's base URL, e.g. `v1/chat/completions`; the catalog says which are allowed.",
    ),
}
_DESCRIPTION: Final = (
    "Sends the request to the account's configured base URL with the credential added (API keys: the catalog's "
    "header templates; OAuth: its access token, refreshed first when due). Query string, body and headers are "
    "passed on, except hop-by-hop, credential and forwarding headers; the answer (any status, headers and body) "
    "comes back as the provider sent it, streamed, without Set-Cookie. Only the methods and paths the provider "
    "type's catalog entry allows are forwarded (403, or 405 for a wrong method). A provider's 401 marks an API-key "
    "account `invalid_credentials`; for OAuth it triggers one refresh (and `consent_required` if that fails). "
    "Service tokens with `accounts:proxy` only (limited to some accounts or provider types if the token is). "
    "Audited per call (`account.proxy`), never with a body or a secret."
)


def _raw_path(account_id: int, path: str) -> str:
    """The path as the caller sent it (still percent-encoded), so an encoded '/' or '..' is seen, not decoded."""
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if isinstance(raw, str):
        raw = raw.split("?", 1)[0]
        marker = f"/accounts/{account_id}/proxy/"
        at = raw.find(marker)
        if at >= 0:
            return "/" + raw[at + len(marker) :]
    return "/" + path


def _details(
    method: str, path: str, status: int | None, sent: int, received: int, started: float, **extra: object
) -> dict[str, object]:
    return {
        "method": method,
        "path": path[:200],
        "status": status,
        "bytes_in": sent,
        "bytes_out": received,
        "ms": round((time.monotonic() - started) * 1000),
        **extra,
    }


def _audit(
    db: Session,
    ctx: audit.AuditContext,
    account_id: int,
    *,
    method: str,
    path: str,
    status: int | None,
    sent: int,
    received: int,
    started: float,
    outcome: audit.Outcome,
    **extra: object,
) -> None:
    audit.record(
        db,
        ctx,
        "account.proxy",
        target=f"connected_account:{account_id}",
        outcome=outcome,
        details=_details(method, path, status, sent, received, started, **extra),
    )
    db.commit()


class _Body:
    """The caller's body as an iterator of chunks, counted and capped; when it ends, the watch on the caller
    starts (a socket with unread body bytes is readable, so it cannot be watched before)."""

    def __init__(self, limit: int, on_end: Callable[[], None]) -> None:
        self.limit = limit
        self.received = 0
        self._on_end = on_end
        self._stream = request.stream

    def __iter__(self) -> Iterator[bytes]:
        while True:
            chunk = self._stream.read(CHUNK)
            if not chunk:
                break
            self.received += len(chunk)
            if self.received > self.limit:
                raise AppError(
                    "validation_failed",
                    "The request body is too large to proxy.",
                    f"Send at most {self.limit} bytes.",
                    fields={"body": f"At most {self.limit} bytes."},
                    status=413,
                )
            yield chunk
        self._on_end()


def _proxy(account_id: int, path: str) -> Response:
    started = time.monotonic()
    settings = get_settings()
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    db = db_session()
    ctx = api_audit_ctx()
    method = request.method
    raw_path = _raw_path(account_id, path)
    caller = departure.caller_socket(request.environ)
    handle = StreamHandle()

    def refuse(exc: AppError, outcome: audit.Outcome = "denied") -> AppError:
        db.rollback()
        _audit(
            db, ctx, account_id, method=method, path=raw_path, status=exc.http_status, sent=0, received=0,
            started=started, outcome=outcome, code=exc.code,
        )  # fmt: skip
        return exc

    try:
        account, provider = rules.proxied_account(db, account_id)
        check_limits(account, provider)
        # The app's 1 MiB body limit is for forms and JSON; a proxied body has its own.
        request.max_content_length = settings.proxy_max_request_bytes
        length = request.content_length
        if length is not None and length > settings.proxy_max_request_bytes:
            raise AppError(
                "validation_failed",
                "The request body is too large to proxy.",
                f"Send at most {settings.proxy_max_request_bytes} bytes.",
                fields={"body": f"At most {settings.proxy_max_request_bytes} bytes."},
                status=413,
            )
        rt = runtime(app)
        target = rules.prepare(
            db, get_cipher(), rt, account, provider, method=method, path=raw_path,
            query_string=request.query_string.decode("latin-1"), headers=request.headers.items(), ctx=ctx,
        )  # fmt: skip
        db.commit()
    except AppError as exc:
        raise refuse(exc, "denied" if exc.code in ("permission_denied", "not_found") else "failure") from None

    if caller is not None and departure.caller_gone(caller):
        # Queued while every thread was busy, and its caller gave up meanwhile: do not send it (it may be billed).
        _audit(
            db, ctx, account_id, method=method, path=raw_path, status=None, sent=0, received=0, started=started,
            outcome="failure", code="caller_gone", stage="queued",
        )  # fmt: skip
        return Response(status=499)

    def start_watch() -> None:
        if caller is not None:
            departure.watch(caller, handle.abort)

    has_body = method in BODY_METHODS and (request.content_length or request.headers.get("Transfer-Encoding"))
    body = _Body(settings.proxy_max_request_bytes, start_watch) if has_body else None
    if body is None:
        start_watch()
    try:
        upstream = get_client(app).open_stream(
            method, target.url, headers=target.headers, params=target.query, content=body,
            read_timeout=settings.proxy_read_timeout, pool_timeout=settings.proxy_pool_timeout, handle=handle,
        )  # fmt: skip
    except AppError as exc:
        if caller is not None:
            departure.unwatch(caller)
        if handle.aborted:
            # The caller left while the upstream was still to answer: its call was cut (nobody to answer).
            handle.detach()
            _audit(
                db, ctx, account_id, method=method, path=raw_path, status=None, sent=body.received if body else 0,
                received=0, started=started, outcome="failure", code="caller_gone", stage="waiting",
            )  # fmt: skip
            return Response(status=499)
        handle.detach()
        raise refuse(exc, "failure") from None

    try:
        unauthorized = rules.note_response(db, rt, target, upstream.status, upstream.headers)
    except Exception:
        # Nothing will read the body: let go of the connection and the watch before the error is answered.
        if caller is not None:
            departure.unwatch(caller)
        handle.detach()
        upstream.close()
        raise
    sent = body.received if body is not None else 0
    return Response(
        _Relay(app, upstream, handle, caller, ctx, account_id, method, raw_path, sent, started, unauthorized),
        status=upstream.status,
        # RFC 9110 §7.6.3: a proxy adds itself to Via; callers tell the provider's answers from AMI Auth's by it.
        headers=[*rules.response_headers(upstream.headers), ("Via", rules.VIA), ("X-Accel-Buffering", "no")],
        direct_passthrough=True,
    )


@dataclass
class _Relay:
    """The upstream body, chunk by chunk, as a WSGI response iterable; audits the call once when it ends,
    however it ends. Cleanup is in :meth:`close` too, which every WSGI server calls: a body that is never
    iterated (a HEAD answer, a caller gone before the first chunk) still lets go of its upstream connection."""

    app: Flask
    upstream: Upstream
    handle: StreamHandle
    caller: departure.Caller | None
    ctx: audit.AuditContext
    account_id: int
    method: str
    path: str
    sent: int
    started: float
    unauthorized: str | None
    received: int = 0
    ended: str = "caller_gone"
    _released: bool = False
    _recorded: bool = False

    def __post_init__(self) -> None:
        if self.method == "HEAD":
            self.ended = "complete"  # no body to relay

    def __iter__(self) -> Iterator[bytes]:
        limit = get_settings(self.app).proxy_max_response_bytes
        try:
            for chunk in self.upstream.chunks():
                self.received += len(chunk)
                if self.received > limit:
                    self.ended = "response_too_large"
                    return
                yield chunk
            self.ended = "complete"
        except ProviderUnreachable:
            self.ended = "caller_gone" if self.handle.aborted else "upstream_broken"
        finally:
            self.close()

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        if self.caller is not None:
            departure.unwatch(self.caller)
        self.handle.detach()
        self.upstream.close()

    def close(self) -> None:
        """Once the body ends (or the server closes an answer it never iterated): the event, handed to the
        process's audit writer (:func:`app.audit_batch.append` with ``wait=False``: committed in a transaction of
        its own, in order, without this thread waiting for it; the request's scoped session is gone by now)."""
        self._release()
        if self._recorded:
            return
        self._recorded = True
        extra: dict[str, object] = {"ended": self.ended}
        if self.unauthorized is not None:
            extra["unauthorized"] = self.unauthorized
        status = self.upstream.status
        audit_batch.append(
            get_database(self.app).engine,
            self.ctx,
            "account.proxy",
            target=f"connected_account:{self.account_id}",
            outcome="success" if status < 400 and self.ended == "complete" else "failure",
            details=_details(self.method, self.path, status, self.sent, self.received, self.started, **extra),
            wait=False,
        )


def _route(method: str, operation_id: str, summary: str) -> None:
    def view(account_id: int, path: str) -> Response:
        return _proxy(account_id, path)

    view.__name__ = f"proxy_{method.lower()}"
    documented = document(
        operation_id=operation_id,
        summary=summary,
        description=_DESCRIPTION,
        response=None,
        response_description="The provider's answer, passed through (any status).",
        path=_PATH,
        errors=(404, 405, 409, 413, 502),
        tags=("accounts",),
    )(view)
    guarded = streams_body(api_auth("accounts:proxy", cookies=False, audit_use=False, free_query=True)(documented))
    bp.add_url_rule(PREFIX, endpoint=view.__name__, view_func=guarded, methods=[method])


_route("GET", "proxyGet", "Call the provider's API with GET through the account (credential added)")
_route("POST", "proxyPost", "Call the provider's API with POST through the account (credential added)")
_route("PUT", "proxyPut", "Call the provider's API with PUT through the account (credential added)")
_route("PATCH", "proxyPatch", "Call the provider's API with PATCH through the account (credential added)")
_route("DELETE", "proxyDelete", "Call the provider's API with DELETE through the account (credential added)")
