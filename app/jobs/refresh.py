"""The token-refresh job: find due accounts, claim them, hand each to :mod:`app.oauth.renewal`.

**Claiming.** A batch of due accounts is leased (``lease_owner``, ``lease_until``, :mod:`app.oauth.leases`) in
one short transaction:

- PostgreSQL: ``UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING id``: concurrent
  claimers skip each other's rows instead of queueing behind them, and the outer ``WHERE`` repeats
  the lease test, which PostgreSQL re-checks on the latest row version.
- SQLite: the same ``UPDATE … RETURNING`` as a compare-and-set (``lease_until IS NULL OR lease_until
  < now``); SQLite runs one writer at a time, so the check and the set cannot interleave.

Any number of job runs, scheduler threads and hosts can therefore run at once and each due account
is refreshed once; what a refresh writes, and how it never loses a token, is :mod:`app.oauth.renewal`.

**Cost.** Due accounts are found by ``status = 'active' AND expires_at <= now + margin`` on the index
``ix_connected_accounts_refresh_due (status, expires_at)``: the work follows the number of due accounts,
not the number stored. Which accounts are OAuth accounts is the catalog's to say (the types that connect
through OAuth), not a list here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import ColumnElement, Engine, Select, and_, func, or_, select, update
from sqlalchemy.orm import Session

from app.models import ConnectedAccount, ProviderConfig, utcnow
from app.oauth.connections import ACTIVE
from app.oauth.leases import LEASE, new_owner
from app.oauth.renewal import Outcome, ProviderCache, load_claimed, refresh_claimed
from app.oauth.runtime import OAuthRuntime
from app.providers.registry import get_catalog

__all__ = [
    "BATCH",
    "RefreshReport",
    "claim_due",
    "due_candidates",
    "due_count",
    "due_filter",
    "run_refresh",
]

log = logging.getLogger("ami_auth.jobs.refresh")

# Claimed per round trip: large enough to amortise the claim, small enough that parallel workers share.
BATCH: Final = 20


@dataclass
class RefreshReport:
    """What a run did, per outcome, plus the taxonomy codes of the failures."""

    refreshed: int = 0
    consent_required: int = 0
    expired: int = 0
    retry_later: int = 0
    skipped: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, outcome: Outcome, code: str | None = None) -> None:
        with self._lock:
            setattr(self, outcome, getattr(self, outcome) + 1)
            if code is not None:
                self.errors[code] = self.errors.get(code, 0) + 1

    @property
    def total(self) -> int:
        return self.refreshed + self.consent_required + self.expired + self.retry_later + self.skipped

    def summary(self) -> str:
        parts = [
            f"refreshed {self.refreshed}",
            f"consent required {self.consent_required}",
            f"expired {self.expired}",
            f"retry later {self.retry_later}",
            f"skipped {self.skipped}",
        ]
        if self.errors:
            parts.append("errors " + ", ".join(f"{k}={v}" for k, v in sorted(self.errors.items())))
        return "; ".join(parts)


def _oauth_config_ids() -> Select[int]:
    oauth_types = get_catalog().ids(lambda e: e.capabilities.oauth)
    return select(ProviderConfig.id).where(
        ProviderConfig.provider_type.in_(oauth_types), ProviderConfig.enabled.is_(True)
    )


def due_filter(now: datetime, horizon: datetime, started_at: datetime | None = None) -> list[ColumnElement[bool]]:
    """The WHERE of a due, claimable account. ``started_at`` skips accounts a run already refreshed, so a
    token that lives shorter than the margin is not refreshed over and over within one run."""
    ca = ConnectedAccount
    conditions: list[ColumnElement[bool]] = [
        ca.status == ACTIVE,
        ca.expires_at <= horizon,
        or_(ca.next_attempt_at.is_(None), ca.next_attempt_at <= now),
        or_(ca.lease_until.is_(None), ca.lease_until < now),
        ca.provider_config_id.in_(_oauth_config_ids().scalar_subquery()),
    ]
    if started_at is not None:
        conditions.append(or_(ca.rotated_at.is_(None), ca.rotated_at < started_at))
    return conditions


def due_candidates(
    now: datetime, horizon: datetime, *, limit: int = BATCH, started_at: datetime | None = None
) -> Select[int]:
    """Ids of due accounts, soonest expiry first: the scan the claim runs (an index range on
    ``(status, expires_at)``; see the EXPLAIN test in tests/integration/test_token_refresh_concurrency.py)."""
    ca = ConnectedAccount
    return select(ca.id).where(*due_filter(now, horizon, started_at)).order_by(ca.expires_at).limit(limit)


def claim_due(
    db: Session,
    owner: str,
    *,
    now: datetime,
    horizon: datetime,
    limit: int = BATCH,
    started_at: datetime | None = None,
) -> list[int]:
    """Lease up to ``limit`` due accounts for ``owner`` and commit; returns their ids (soonest expiry first)."""
    ca = ConnectedAccount
    candidates = due_candidates(now, horizon, limit=limit, started_at=started_at)
    if db.get_bind().dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    claim = (
        update(ca)
        .where(ca.id.in_(candidates.scalar_subquery()), or_(ca.lease_until.is_(None), ca.lease_until < now))
        .values(lease_owner=owner, lease_until=now + LEASE)
        .returning(ca.id)
        .execution_options(synchronize_session=False)
    )
    ids = list(db.scalars(claim))
    db.commit()
    return ids


def run_refresh(
    rt: OAuthRuntime,
    engine: Engine,
    *,
    margin: timedelta | None = None,
    workers: int = 4,
    limit: int | None = None,
    now: Callable[[], datetime] = utcnow,
) -> RefreshReport:
    """Refresh every account due within ``margin`` (default ``AMI_AUTH_TOKEN_REFRESH_MARGIN_MINUTES``).

    ``workers`` threads claim batches until none is left (or ``limit`` accounts were handled). Safe to run
    in any number of processes at once.
    """
    margin = margin if margin is not None else timedelta(minutes=rt.settings.token_refresh_margin_minutes)
    started_at = now()
    report = RefreshReport()
    providers = ProviderCache(rt)
    budget = [limit if limit is not None else -1]
    budget_lock = threading.Lock()

    def take(n: int) -> int:
        with budget_lock:
            if budget[0] < 0:
                return n
            granted = min(n, budget[0])
            budget[0] -= granted
            return granted

    def work() -> None:
        owner = new_owner()
        with Session(engine) as db:
            while True:
                size = take(BATCH)
                if size == 0:
                    return
                moment = now()
                ids = claim_due(db, owner, now=moment, horizon=moment + margin, limit=size, started_at=started_at)
                if not ids:
                    return
                claimed = load_claimed(db, rt, ids, owner)
                for _ in range(len(ids) - len(claimed)):
                    report.add("skipped")  # deleted (disconnected) since the claim
                for item in claimed:
                    try:
                        result = refresh_claimed(db, rt, providers, item, owner)
                    except Exception:
                        # One broken account must not stop the run; its lease ends and it is retried.
                        db.rollback()
                        log.exception("refreshing connected account %s failed", item.account_id)
                        report.add("retry_later", "internal_error")
                        continue
                    report.add(result.outcome, result.error.code if result.error is not None else None)

    count = max(1, workers)
    if count == 1:
        work()
    else:
        with ThreadPoolExecutor(max_workers=count, thread_name_prefix="token-refresh") as pool:
            for future in [pool.submit(work) for _ in range(count)]:
                future.result()
    if report.total:
        log.info("token refresh: %s", report.summary())
    return report


def due_count(db: Session, *, now: datetime, margin: timedelta) -> int:
    """How many accounts are due (for the CLI and the console)."""
    return int(
        db.scalar(select(func.count()).select_from(ConnectedAccount).where(and_(*due_filter(now, now + margin)))) or 0
    )
