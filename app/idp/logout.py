"""OpenID Connect Back-Channel Logout 1.0: when an AMI session ends, every client that got tokens in it is told,
server to server, with a signed ``logout_token``.

Every way a session ends goes through :mod:`app.auth.sessions` (sign-out, an admin or the user revoking it, a
password change or reset ending the other sessions, a user disabled or deleted), which calls
:func:`sessions_ended` in the same transaction. That writes one outbox row per (session, client) and revokes the
tokens issued in those sessions — so the logout is recorded if and only if the session really ended.

Delivery is at least once, from the outbox, never inside the request that ended the session: a relying party
that is slow or down must not slow a sign-out or lose the message. Right after the commit a delivery thread is
woken (:mod:`app.idp.delivery`); a failure is retried with growing delays (:data:`BACKOFF`, about ten hours in
all) and audited each time; workers claim rows before sending, so two workers (or hosts) do not both deliver one.
A row left behind by a worker that died is taken again when its claim lapses, by the periodic sweep or
``ami-auth oidc logout deliver``.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from joserfc import jwt
from sqlalchemy import Engine, delete, func, or_, select, update
from sqlalchemy.orm import Session

from app import audit
from app.audit import AuditContext
from app.errors import AppError
from app.idp import tokens
from app.idp.claims import subject_of
from app.idp.keys import KeyRing
from app.models import OidcClient, OidcLogoutDelivery, OidcSessionClient, utcnow
from app.net import OutboundClient

log = logging.getLogger("ami_auth.idp.logout")

EVENT: Final = "http://schemas.openid.net/event/backchannel-logout"
# OIDC Back-Channel Logout §2.4: a short lifetime (the RP checks iat/exp); two minutes.
TOKEN_SECONDS: Final = 120
REQUEST_TIMEOUT: Final = 5.0
# Delay before each retry: ten seconds, then growing to six hours; after the last one the delivery has failed.
BACKOFF: Final = (
    timedelta(seconds=10),
    timedelta(seconds=30),
    timedelta(minutes=2),
    timedelta(minutes=10),
    timedelta(minutes=30),
    timedelta(hours=1),
    timedelta(hours=3),
    timedelta(hours=6),
)
MAX_ATTEMPTS: Final = len(BACKOFF) + 1
# Delivered and failed rows stay this long (the audit log keeps the record for good).
KEEP_DONE: Final = timedelta(days=30)
CLAIM: Final = timedelta(seconds=60)
# Set on the Session whose transaction queued deliveries; app.idp.delivery wakes the sender after its commit.
PENDING: Final = "ami_idp_logout_pending"
ACTOR: Final = AuditContext(actor="system")


def sessions_ended(db: Session, session_ids: Sequence[str], reason: str = "") -> int:
    """Queue a logout for every client that took part in these sessions, and revoke their tokens; returns how
    many deliveries were queued. Call in the transaction that ends the sessions."""
    ids = list(session_ids)
    if not ids:
        return 0
    now = utcnow()
    rows = db.execute(
        select(OidcSessionClient.user_id, OidcSessionClient.sid, OidcClient.id, OidcClient.backchannel_logout_uri)
        .join(OidcClient, OidcClient.id == OidcSessionClient.client_id)
        .where(OidcSessionClient.session_id.in_(ids), OidcClient.enabled.is_(True))
    ).all()
    queued = 0
    for user_id, sid, client_pk, uri in rows:
        if not uri:
            continue
        db.add(
            OidcLogoutDelivery(
                client_id=client_pk,
                uri=uri,
                sub=subject_of(user_id),
                sid=sid,
                jti=secrets.token_urlsafe(24),
                reason=reason[:40],
                created_at=now,
                next_attempt_at=now,
            )
        )
        queued += 1
    if rows:
        db.execute(delete(OidcSessionClient).where(OidcSessionClient.session_id.in_(ids)))
    tokens.revoke_for_sessions(db, ids, now)
    if queued:
        db.flush()
        db.info[PENDING] = True
    return queued


def logout_token(keyring: KeyRing, issuer: str, client: OidcClient, delivery: OidcLogoutDelivery) -> str:
    """The signed logout token (OIDC Back-Channel Logout §2.4), with the algorithm the client's ID tokens use."""
    key = keyring.signing_key(client.id_token_alg)
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": issuer,
        "aud": client.client_id,
        "iat": now,
        "exp": now + TOKEN_SECONDS,
        "jti": delivery.jti,
        "sub": delivery.sub,
        "events": {EVENT: {}},
    }
    if delivery.sid:
        claims["sid"] = delivery.sid
    header = {"alg": client.id_token_alg, "kid": key.kid, "typ": "logout+jwt"}
    return jwt.encode(header, claims, key, algorithms=[client.id_token_alg])


@dataclass(frozen=True)
class Run:
    delivered: int = 0
    retrying: int = 0
    failed: int = 0
    taken_over: int = 0  # claimed by this run, then by another while this one waited on slow apps: left to it
    next_due: datetime | None = None


_DUE = (
    OidcLogoutDelivery.delivered_at.is_(None),
    OidcLogoutDelivery.failed_at.is_(None),
)


def _claimable(now: datetime) -> object:
    return or_(OidcLogoutDelivery.claimed_until.is_(None), OidcLogoutDelivery.claimed_until < now)


def next_due(engine: Engine) -> datetime | None:
    with Session(engine) as db:
        return db.scalar(select(func.min(OidcLogoutDelivery.next_attempt_at)).where(*_DUE))


def deliver_due(
    engine: Engine, keyring: KeyRing, issuer: str, http: OutboundClient, now: datetime | None = None, limit: int = 50
) -> Run:
    """Send the logouts that are due (claimed first, so no other worker sends them meanwhile)."""
    now = now or utcnow()
    claim = now + CLAIM  # this run's mark on what it claims; each try checks it is still there
    with Session(engine) as db:
        candidates = db.scalars(
            select(OidcLogoutDelivery.id)
            .where(*_DUE, OidcLogoutDelivery.next_attempt_at <= now, _claimable(now))  # type: ignore[arg-type]
            .order_by(OidcLogoutDelivery.next_attempt_at, OidcLogoutDelivery.id)
            .limit(limit)
        ).all()
        mine = []
        for delivery_id in candidates:
            claimed = db.execute(
                update(OidcLogoutDelivery)
                .where(OidcLogoutDelivery.id == delivery_id, *_DUE, _claimable(now))  # type: ignore[arg-type]
                .values(claimed_until=claim)
            )
            if getattr(claimed, "rowcount", 0) == 1:
                mine.append(delivery_id)
        db.commit()
    counts = {"delivered": 0, "retrying": 0, "failed": 0, "taken_over": 0}
    for delivery_id in mine:
        counts[_deliver_one(engine, keyring, issuer, http, delivery_id, claim, now)] += 1
    return Run(**counts, next_due=next_due(engine))


def _deliver_one(
    engine: Engine,
    keyring: KeyRing,
    issuer: str,
    http: OutboundClient,
    delivery_id: int,
    claim: datetime,
    now: datetime,
) -> str:
    """One try, if the delivery is still this run's (its ``claimed_until`` still the run's ``claim``): the claim
    is renewed first and the outcome written only if the renewed claim still holds afterwards. The run claims a
    batch and tries it one by one, each up to :data:`REQUEST_TIMEOUT`: behind apps that hang, the claim runs out,
    and another worker may take the rest and send it; this run then leaves it alone."""
    renewed = max(now, utcnow()) + CLAIM
    with Session(engine) as db:
        held = db.execute(
            update(OidcLogoutDelivery)
            .where(OidcLogoutDelivery.id == delivery_id, *_DUE, OidcLogoutDelivery.claimed_until == claim)
            .values(claimed_until=renewed)
        )
        db.commit()
        if getattr(held, "rowcount", 0) != 1:
            return "taken_over"
        delivery = db.get(OidcLogoutDelivery, delivery_id)
        client = db.get(OidcClient, delivery.client_id) if delivery is not None else None
        if delivery is None or client is None:
            return "failed"
        error: str | None = None
        client_id, uri = client.client_id, delivery.uri
        try:
            token = logout_token(keyring, issuer, client, delivery)
            db.rollback()  # nothing is held while the app answers (no transaction, no pooled connection)
            # OIDC Back-Channel Logout §2.5: a form POST; redirects are not followed.
            response = http.post(
                uri,
                data={"logout_token": token},
                headers={"Cache-Control": "no-store"},
                timeout=REQUEST_TIMEOUT,
                follow_redirects=False,
            )
            if not 200 <= response.status_code < 300:
                error = f"HTTP {response.status_code}"
            response.close()
        except AppError as exc:
            error = exc.text
        db.rollback()  # if the token could not be made; the outcome goes only where the claim still holds
        delivery = db.scalars(
            select(OidcLogoutDelivery).where(
                OidcLogoutDelivery.id == delivery_id, *_DUE, OidcLogoutDelivery.claimed_until == renewed
            )
        ).one_or_none()
        if delivery is None:
            return "taken_over"
        now = utcnow()
        delivery.attempts += 1
        delivery.claimed_until = None
        details: dict[str, object] = {
            "client": client_id,
            "sid": delivery.sid,
            "attempt": delivery.attempts,
            "reason": delivery.reason,
        }
        if error is None:
            delivery.delivered_at = now
            delivery.last_error = None
            audit.record(db, ACTOR, "oidc.backchannel.deliver", target=f"user:{delivery.sub}", details=details)
            outcome = "delivered"
        else:
            delivery.last_error = error[:300]
            final = delivery.attempts >= MAX_ATTEMPTS
            if final:
                delivery.failed_at = now
            else:
                delivery.next_attempt_at = now + BACKOFF[delivery.attempts - 1]
            log.warning("back-channel logout to %s failed (attempt %s): %s", client_id, delivery.attempts, error)
            audit.record(
                db,
                ACTOR,
                "oidc.backchannel.fail",
                target=f"user:{delivery.sub}",
                outcome="failure",
                details={**details, "error": error[:200], "final": final},
            )
            outcome = "failed" if final else "retrying"
        db.commit()
        return outcome


def purge_done(db: Session, now: datetime | None = None) -> int:
    """Delete outbox rows delivered or failed more than :data:`KEEP_DONE` ago; returns how many."""
    cutoff = (now or utcnow()) - KEEP_DONE
    done = or_(OidcLogoutDelivery.delivered_at < cutoff, OidcLogoutDelivery.failed_at < cutoff)
    result = db.execute(delete(OidcLogoutDelivery).where(done).execution_options(synchronize_session=False))
    return int(getattr(result, "rowcount", 0) or 0)
