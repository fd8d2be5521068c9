"""Recovery codes: ten single-use look-up secrets (NIST SP 800-63B §5.1.2) for when a factor is lost.

Storage: argon2id with the password parameters, one salted hash per code. A code carries ~49 bits, which a
fast salted SHA-256 would let an attacker holding a copy of the table search offline in GPU-days; a
memory-hard hash makes that impractical (SP 800-63B §5.1.2.2 asks for storage resistant to offline attack).
The cost — up to ten verifications per attempt — is bounded by the per-user limit on wrong attempts.
"""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from app.auth import passwords
from app.models import Credential, User, utcnow
from app.settings import Settings

COUNT = 10
# Lower-case letters and digits without look-alikes (0/o, 1/l/i): easy to read off paper and type.
ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
HALF = 5


def _new_code() -> str:
    raw = "".join(secrets.choice(ALPHABET) for _ in range(2 * HALF))
    return f"{raw[:HALF]}-{raw[HALF:]}"


def normalize(code: str) -> str:
    """What is hashed: lower case, no spaces or dashes (so "ABCDE FGHJK" matches "abcde-fghjk")."""
    return "".join(ch for ch in code.lower() if ch not in " -\t")


def generate(db: Session, settings: Settings, user: User, now: datetime | None = None) -> list[str]:
    """Replace all of a user's codes with ten new ones and return them; they are never retrievable again."""
    now = now or utcnow()
    db.execute(delete(Credential).where(Credential.user_id == user.id, Credential.kind == "recovery_code"))
    codes = [_new_code() for _ in range(COUNT)]
    for code in codes:
        db.add(
            Credential(
                user_id=user.id,
                kind="recovery_code",
                name="Recovery code",
                code_hash=passwords.hash_password(settings, normalize(code)),
                created_at=now,
                confirmed_at=now,
            )
        )
    db.flush()
    return codes


def remaining(db: Session, user_id: int) -> int:
    return len(_unused(db, user_id))


def _unused(db: Session, user_id: int) -> list[Credential]:
    return list(
        db.scalars(
            select(Credential).where(
                Credential.user_id == user_id,
                Credential.kind == "recovery_code",
                Credential.last_used_at.is_(None),
            )
        )
    )


def use(db: Session, settings: Settings, user: User, raw_code: str, now: datetime | None = None) -> bool:
    """Spend a code: True once per code. The spend is a compare-and-set, so a code cannot pass twice even
    when two requests race with it."""
    now = now or utcnow()
    code = normalize(raw_code)
    if len(code) != 2 * HALF or any(ch not in ALPHABET for ch in code):
        return False
    for row in _unused(db, user.id):
        if row.code_hash is not None and passwords.verify_password(settings, row.code_hash, code):
            result = db.execute(
                update(Credential)
                .where(Credential.id == row.id, Credential.last_used_at.is_(None))
                .values(last_used_at=now)
                .execution_options(synchronize_session=False)
            )
            return getattr(result, "rowcount", 0) == 1
    return False


def as_text(codes: list[str], account: str, generated_at: datetime) -> str:
    """The downloadable file: the codes and what they are for."""
    lines = [
        f"AMI Auth recovery codes for {account}",
        f"Generated {generated_at.strftime('%Y-%m-%d %H:%M')} UTC. Each code works once.",
        "Keep them somewhere safe. Generating new codes makes these stop working.",
        "",
        *codes,
        "",
    ]
    return "\n".join(lines)
