"""``Idempotency-Key`` on the creating POSTs: a retried create returns the first answer instead of a second item.

The semantics are Stripe's, in the shape of draft-ietf-httpapi-idempotency-key-header:

* The key is the caller's (a service token's or a signed-in user's own namespace), 1 to 255 printable
  ASCII characters, kept for :data:`TTL` (24 hours) in the database — every worker and host sees it.
* The first request runs; a **2xx** answer is stored (status, body, ``Location``) with a SHA-256 of the
  request body. A failure is not stored: it created nothing (the services roll back), so a retry after
  fixing the cause runs again — like Stripe, which keeps no result when a request failed validation.
* The same key again with the same method, path and body: the stored answer, with
  ``Idempotent-Replayed: true``, and nothing runs.
* The same key with another body (or another endpoint): 422 ``validation_failed`` on ``Idempotency-Key``
  (the draft's 422; Stripe answers an ``idempotency_error``) — a key names one intended creation.
* The same key while the first request is still running: 409 ``conflict`` with ``Retry-After``. A
  first attempt that never finished (its worker died) stops blocking the key after :data:`ABANDONED`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final

from flask import request
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response

from app.errors import AppError
from app.models import IdempotencyRecord, utcnow

HEADER: Final = "Idempotency-Key"
TTL: Final = timedelta(hours=24)
ABANDONED: Final = timedelta(minutes=2)
KEY_MAX: Final = 255


def presented_key() -> str | None:
    """The request's Idempotency-Key, checked; ``None`` when it has none."""
    raw = request.headers.get(HEADER)
    if raw is None:
        return None
    if not 1 <= len(raw) <= KEY_MAX or not all("!" <= c <= "~" for c in raw):
        raise AppError(
            "validation_failed",
            fields={HEADER: f"Use 1 to {KEY_MAX} printable ASCII characters without spaces, e.g. a UUID."},
        )
    return raw


def _body_hash() -> str:
    return hashlib.sha256(request.get_data(cache=True)).hexdigest()


def _find(db: Session, owner: str, key: str) -> IdempotencyRecord | None:
    return db.scalar(select(IdempotencyRecord).where(IdempotencyRecord.owner == owner, IdempotencyRecord.key == key))


def _replay(record: IdempotencyRecord, body_hash: str, now: datetime) -> Response | None:
    """The stored answer, a refusal, or ``None`` when an abandoned first attempt may be taken over."""
    if record.method != request.method or record.path != request.path[:300] or record.body_hash != body_hash:
        raise AppError(
            "validation_failed",
            "This Idempotency-Key was already used for a different request.",
            "Use a new key for each intended creation; send exactly the same request to retry one.",
            fields={HEADER: "Already used, within the last 24 hours, with another body or endpoint."},
        )
    if record.status is None:
        if now - record.created_at > ABANDONED:
            return None
        raise AppError(
            "conflict",
            "A request with this Idempotency-Key is still in progress.",
            "Wait a moment, then send the same request again to get its answer.",
            retry_after=1,
        )
    response = Response(record.response_body or "", status=record.status, mimetype="application/json")
    if record.location:
        response.headers["Location"] = record.location
    response.headers["Idempotent-Replayed"] = "true"
    return response


def run(db: Session, owner: str, key: str, view: Callable[[], Response]) -> Response:
    """Replay the stored answer for (owner, key), or run ``view`` once and store its 2xx answer."""
    body_hash = _body_hash()
    now = utcnow()
    db.execute(delete(IdempotencyRecord).where(IdempotencyRecord.created_at < now - TTL))
    existing = _find(db, owner, key)
    if existing is not None:
        replayed = _replay(existing, body_hash, now)
        if replayed is not None:
            db.commit()
            return replayed
        db.delete(existing)  # an abandoned first attempt: this one takes the key over
        db.flush()
    record = IdempotencyRecord(
        owner=owner, key=key, method=request.method, path=request.path[:300], body_hash=body_hash, created_at=now
    )
    db.add(record)
    try:
        db.commit()
    except IntegrityError:
        # Another worker stored the same (owner, key) a moment ago: answer as if we had seen its row.
        db.rollback()
        raced = _find(db, owner, key)
        if raced is None:
            raise AppError("conflict", "A request with this Idempotency-Key is in progress.", retry_after=1) from None
        replayed = _replay(raced, body_hash, utcnow())
        if replayed is None:
            raise AppError("conflict", "A request with this Idempotency-Key is in progress.", retry_after=1) from None
        return replayed
    record_id = record.id
    try:
        response = view()
    except BaseException:
        _forget(db, record_id)
        raise
    if 200 <= response.status_code < 300:
        db.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.id == record_id)
            .values(
                status=response.status_code,
                response_body=response.get_data(as_text=True),
                location=response.headers.get("Location"),
            )
        )
        db.commit()
    else:
        _forget(db, record_id)
    return response


def _forget(db: Session, record_id: int) -> None:
    """Release the key after a failed first attempt (nothing was created, so a retry may run)."""
    db.rollback()
    db.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id == record_id))
    db.commit()
