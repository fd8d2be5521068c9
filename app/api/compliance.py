"""The compliance report: one snapshot shared by the API, the console page and the CLI. Logic only.

What it checks, and where the rule comes from:

* MFA coverage per role, and active users in a role that requires MFA (the console's Security policy,
  else ``AMI_AUTH_MFA_REQUIRED_ROLES``) with no second factor (NIST SP 800-63B AAL2 for privileged
  roles). Enrolment and policy are read through ``hooks``.
* Account secrets past their rotation policy: ``rotated_at`` (or, never rotated, ``created_at``) older
  than ``hooks.rotation_days`` — the provider config's ``rotation_days`` (the catalog entry's default per
  provider type) for API-key and SMTP accounts, ``AMI_AUTH_SECRET_ROTATION_DAYS`` for the rest; that
  setting at 0 turns the check off.
* Accounts failing refresh or verification: a recorded ``last_error_code``; their ``status`` is the accounts
  API's public vocabulary (``app.api.account_snapshots``), never the stored word.
* Service tokens unused for 90 days: live credentials nobody uses are pure risk; revoke them.
* The audit chain: :func:`app.audit.verify` from the first event to the last.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import audit
from app.api import hooks, tokens
from app.api.account_snapshots import Reason, Status, derive_status
from app.models import ROLES, ConnectedAccount, User, utcnow
from app.settings import Settings


@dataclass(frozen=True)
class RoleCoverage:
    role: str
    users: int
    enrolled: int
    required: bool

    @property
    def percent(self) -> float:
        return round(100.0 * self.enrolled / self.users, 1) if self.users else 100.0


@dataclass(frozen=True)
class PolicyViolation:
    user_id: int
    email: str
    role: str


@dataclass(frozen=True)
class OverdueSecret:
    account_id: int
    provider_type: str
    provider_config: str
    label: str
    user_id: int | None
    rotated_at: datetime | None
    age_days: int
    policy_days: int


@dataclass(frozen=True)
class FailingAccount:
    account_id: int
    provider_type: str
    provider_config: str
    label: str
    user_id: int | None
    status: Status
    status_reason: Reason
    error_code: str
    error_hint: str
    error_at: datetime | None
    attempts: int


@dataclass(frozen=True)
class UnusedToken:
    token_id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None


@dataclass(frozen=True)
class Report:
    generated_at: datetime
    mfa_required_roles: tuple[str, ...]
    coverage: tuple[RoleCoverage, ...]
    violations: tuple[PolicyViolation, ...]
    overdue_secrets: tuple[OverdueSecret, ...]
    failing_accounts: tuple[FailingAccount, ...]
    unused_tokens: tuple[UnusedToken, ...]
    unused_token_days: int
    audit: audit.VerifyResult

    @property
    def findings(self) -> int:
        """How many things need someone's attention (0 means a clean report)."""
        return (
            len(self.violations)
            + len(self.overdue_secrets)
            + len(self.failing_accounts)
            + len(self.unused_tokens)
            + (0 if self.audit.ok else 1)
        )


def build_report(db: Session, settings: Settings, now: datetime | None = None) -> Report:
    now = now or utcnow()
    required_roles = hooks.mfa_required_roles(db, settings)

    users = db.scalars(select(User).where(User.is_active.is_(True)).order_by(User.id)).all()
    roles = list(ROLES) + sorted({u.role for u in users} - set(ROLES))
    totals = dict.fromkeys(roles, 0)
    enrolled = dict.fromkeys(roles, 0)
    violations: list[PolicyViolation] = []
    for user in users:
        summary = hooks.mfa_summary(db, user)
        totals[user.role] += 1
        if summary.enrolled:
            enrolled[user.role] += 1
        elif user.role in required_roles:
            violations.append(PolicyViolation(user.id, user.email, user.role))
    coverage = tuple(RoleCoverage(r, totals[r], enrolled[r], r in required_roles) for r in roles)

    overdue: list[OverdueSecret] = []
    failing: list[FailingAccount] = []
    for account in db.scalars(select(ConnectedAccount).order_by(ConnectedAccount.id)):
        config = account.provider_config
        days = hooks.rotation_days(db, settings, account)
        since = account.rotated_at or account.created_at
        if days is not None and now - since > timedelta(days=days):
            overdue.append(
                OverdueSecret(
                    account.id,
                    config.provider_type,
                    config.name,
                    account.label,
                    account.user_id,
                    account.rotated_at,
                    (now - since).days,
                    days,
                )
            )
        if account.last_error_code:
            status, reason = derive_status(account, now, timedelta(minutes=settings.token_refresh_margin_minutes))
            failing.append(
                FailingAccount(
                    account.id,
                    config.provider_type,
                    config.name,
                    account.label,
                    account.user_id,
                    status,
                    reason,
                    account.last_error_code,
                    account.last_error_hint or "",
                    account.last_error_at,
                    account.error_attempts,
                )
            )

    unused = tuple(
        UnusedToken(t.id, t.name, t.prefix, t.created_at, t.last_used_at) for t in tokens.unused_tokens(db, now)
    )
    return Report(
        generated_at=now,
        mfa_required_roles=required_roles,
        coverage=coverage,
        violations=tuple(violations),
        overdue_secrets=tuple(overdue),
        failing_accounts=tuple(failing),
        unused_tokens=unused,
        unused_token_days=tokens.UNUSED_AFTER.days,
        audit=audit.verify(db),
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def report_json(report: Report) -> dict[str, Any]:
    """The report as the API returns it (and ``ami-auth compliance report --json`` prints it)."""
    return {
        "generated_at": report.generated_at.isoformat(),
        "findings": report.findings,
        "mfa": {
            "required_roles": list(report.mfa_required_roles),
            "coverage": [
                {"role": c.role, "users": c.users, "enrolled": c.enrolled, "percent": c.percent, "required": c.required}
                for c in report.coverage
            ],
            "violations": [{"user_id": v.user_id, "email": v.email, "role": v.role} for v in report.violations],
        },
        "secrets_past_rotation": [
            {
                "account_id": s.account_id,
                "provider_type": s.provider_type,
                "provider_config": s.provider_config,
                "label": s.label,
                "user_id": s.user_id,
                "rotated_at": _iso(s.rotated_at),
                "age_days": s.age_days,
                "policy_days": s.policy_days,
            }
            for s in report.overdue_secrets
        ],
        "accounts_failing": [
            {
                "account_id": a.account_id,
                "provider_type": a.provider_type,
                "provider_config": a.provider_config,
                "label": a.label,
                "user_id": a.user_id,
                "status": a.status,
                "status_reason": a.status_reason,
                "last_error": {"code": a.error_code, "hint": a.error_hint, "at": _iso(a.error_at)},
                "attempts": a.attempts,
            }
            for a in report.failing_accounts
        ],
        "service_tokens_unused": {
            "days": report.unused_token_days,
            "tokens": [
                {
                    "id": t.token_id,
                    "name": t.name,
                    "prefix": t.prefix,
                    "created_at": t.created_at.isoformat(),
                    "last_used_at": _iso(t.last_used_at),
                }
                for t in report.unused_tokens
            ],
        },
        "audit_chain": {
            "ok": report.audit.ok,
            "checked": report.audit.checked,
            "first_bad_id": report.audit.first_bad_id,
            "problem": report.audit.problem,
            "head_hash": report.audit.head_hash,
        },
    }


def report_text(report: Report) -> str:
    """A plain-text rendering for the terminal (``ami-auth compliance report``)."""
    lines = [f"Compliance report, {report.generated_at:%Y-%m-%d %H:%M} UTC: {report.findings} finding(s)", ""]
    required = ", ".join(report.mfa_required_roles) or "none"
    lines.append(f"MFA coverage (required for: {required})")
    for c in report.coverage:
        mark = " (required)" if c.required else ""
        lines.append(f"  {c.role:<10} {c.enrolled}/{c.users} enrolled ({c.percent:g}%){mark}")
    lines.append(f"Users violating the MFA policy: {len(report.violations)}")
    lines += [f"  user {v.user_id} {v.email} ({v.role})" for v in report.violations]
    lines.append(f"Secrets past their rotation policy: {len(report.overdue_secrets)}")
    lines += [
        f"  account {s.account_id} {s.provider_type}/{s.provider_config} {s.label!r}: "
        f"{s.age_days} days old, policy {s.policy_days}"
        for s in report.overdue_secrets
    ]
    lines.append(f"Accounts failing refresh: {len(report.failing_accounts)}")
    lines += [
        f"  account {a.account_id} {a.provider_type}/{a.provider_config} {a.label!r}: {a.error_code}"
        f" ({a.attempts} attempt(s))"
        for a in report.failing_accounts
    ]
    lines.append(f"Service tokens unused for {report.unused_token_days} days: {len(report.unused_tokens)}")
    lines += [
        f"  token {t.token_id} {t.name!r} ({t.prefix}…), last used {_iso(t.last_used_at) or 'never'}"
        for t in report.unused_tokens
    ]
    if report.audit.ok:
        lines.append(f"Audit chain: OK, {report.audit.checked} events, head hash {report.audit.head_hash}")
    else:
        lines.append(f"Audit chain: TAMPERED: {report.audit.problem}")
    return "\n".join(lines)
