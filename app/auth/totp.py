"""Authenticator apps: TOTP (RFC 6238) with a secret kept encrypted in the vault.

Enrolment is two steps: a pending credential with a fresh secret (shown as a QR code and as text), then one
correct code confirms it. Codes are accepted one step either side of now, and never twice.
"""

from __future__ import annotations

import base64
import hmac
import io
from dataclasses import dataclass
from datetime import datetime

import pyotp
import qrcode
import qrcode.image.svg
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.errors import N_, AppError
from app.models import Credential, User, utcnow
from app.settings import Settings
from app.vault import Cipher, Secret, delete_secrets, get_secret, put_secret

DIGITS = 6
STEP_SECONDS = 30
# RFC 6238 §5.2: accept at most one time step of drift either way (clock skew and typing time).
WINDOW = 1
ISSUER = "AMI Auth"
SECRET_OWNER = "credential"
SECRET_FIELD = "totp_secret"


@dataclass(frozen=True)
class Enrolment:
    """A pending set-up: what the enrolment page shows until the first code confirms it."""

    credential: Credential
    secret: Secret
    uri: str

    @property
    def grouped_secret(self) -> str:
        """The secret in groups of four, easier to type into an app by hand."""
        raw = self.secret.reveal()
        return " ".join(raw[i : i + 4] for i in range(0, len(raw), 4))

    @property
    def qr_data_uri(self) -> str:
        return qr_data_uri(self.uri)


def cipher(settings: Settings) -> Cipher:
    return Cipher(settings.master_keys)


def time_step(now: datetime) -> int:
    return int(now.timestamp()) // STEP_SECONDS


def normalize_code(raw: str | None) -> str | None:
    """Digits only ("123 456" and "123-456" are fine); None when it cannot be a code."""
    if raw is None:
        return None
    code = "".join(ch for ch in raw if ch not in " -\t")
    if len(code) != DIGITS or not code.isascii() or not code.isdigit():
        return None
    return code


def matching_step(secret: str, code: str, now: datetime, *, after_step: int | None = None) -> int | None:
    """The time step within ±WINDOW whose code equals ``code`` and is later than ``after_step``, else None."""
    otp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)
    current = time_step(now)
    for step in range(current - WINDOW, current + WINDOW + 1):
        if after_step is not None and step <= after_step:
            continue
        if hmac.compare_digest(otp.generate_otp(step), code):
            return step
    return None


def provisioning_uri(secret: str, account: str) -> str:
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(name=account, issuer_name=ISSUER)


def qr_svg(text: str) -> bytes:
    """An SVG QR code. The path factory emits only presentation attributes (fill, d) and no style attribute,
    so it passes the CSP (style-src 'self') even inline; the white fill keeps it scannable in dark themes."""
    image = qrcode.make(text, image_factory=qrcode.image.svg.SvgPathFillImage, box_size=10, border=4)
    buffer = io.BytesIO()
    image.save(buffer)
    return buffer.getvalue()


def qr_data_uri(text: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(qr_svg(text)).decode("ascii")


def confirmed(db: Session, user_id: int) -> Credential | None:
    return db.scalar(
        select(Credential).where(
            Credential.user_id == user_id, Credential.kind == "totp", Credential.confirmed_at.is_not(None)
        )
    )


def _pending(db: Session, user_id: int) -> Credential | None:
    return db.scalar(
        select(Credential)
        .where(Credential.user_id == user_id, Credential.kind == "totp", Credential.confirmed_at.is_(None))
        .order_by(Credential.id.desc())
        .limit(1)
    )


def _secret(db: Session, settings: Settings, credential: Credential) -> Secret | None:
    return get_secret(db, cipher(settings), SECRET_OWNER, credential.id, SECRET_FIELD)


def pending_enrolment(db: Session, settings: Settings, user: User) -> Enrolment | None:
    credential = _pending(db, user.id)
    if credential is None:
        return None
    secret = _secret(db, settings, credential)
    if secret is None:
        return None
    return Enrolment(credential, secret, provisioning_uri(secret.reveal(), user.email))


def start_enrolment(db: Session, settings: Settings, user: User) -> Enrolment:
    """A pending set-up with a new 160-bit secret (RFC 4226 §4 recommends 160 bits); an unfinished one is
    kept, so reloading the page does not invalidate a QR code the user already scanned."""
    if confirmed(db, user.id) is not None:
        raise AppError(
            "conflict",
            N_("An authenticator app is already set up."),
            N_("Remove it first if you want to move to a new app."),
        )
    existing = pending_enrolment(db, settings, user)
    if existing is not None:
        return existing
    credential = Credential(user_id=user.id, kind="totp", name="Authenticator app", created_at=utcnow())
    db.add(credential)
    db.flush()
    secret = pyotp.random_base32()
    put_secret(db, cipher(settings), SECRET_OWNER, credential.id, SECRET_FIELD, secret, grace=None)
    return Enrolment(credential, Secret(secret), provisioning_uri(secret, user.email))


def confirm_enrolment(
    db: Session, settings: Settings, user: User, raw_code: str | None, now: datetime | None = None
) -> Credential:
    """Finish a pending set-up with one correct code; the code's step counts as used."""
    now = now or utcnow()
    enrolment = pending_enrolment(db, settings, user)
    if enrolment is None:
        raise AppError("conflict", N_("There is no authenticator set-up in progress."), N_("Start the set-up again."))
    code = normalize_code(raw_code)
    if code is None:
        raise AppError(
            "validation_failed", fields={"code": N_("Enter the %(digits)s-digit code from your app.", digits=DIGITS)}
        )
    step = matching_step(enrolment.secret.reveal(), code, now)
    if step is None:
        raise AppError(
            "invalid_credentials",
            fields={"code": N_("That code is not right. Check the app's clock and enter the current code.")},
        )
    credential = enrolment.credential
    credential.confirmed_at = now
    credential.last_used_step = step
    credential.last_used_at = now
    db.flush()
    return credential


def verify(db: Session, settings: Settings, user: User, raw_code: str | None, now: datetime | None = None) -> bool:
    """Check a sign-in code. A code whose step is not later than the last accepted one is refused (replay),
    and the step is recorded with a compare-and-set so two requests racing with one code cannot both pass."""
    now = now or utcnow()
    code = normalize_code(raw_code)
    credential = confirmed(db, user.id)
    if code is None or credential is None:
        return False
    secret = _secret(db, settings, credential)
    if secret is None:
        return False
    step = matching_step(secret.reveal(), code, now, after_step=credential.last_used_step)
    if step is None:
        return False
    result = db.execute(
        update(Credential)
        .where(
            Credential.id == credential.id,
            or_(Credential.last_used_step.is_(None), Credential.last_used_step < step),
        )
        .values(last_used_step=step, last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        return False
    db.refresh(credential)
    return True


def discard_pending(db: Session, user_id: int) -> None:
    credential = _pending(db, user_id)
    if credential is not None:
        delete_secrets(db, SECRET_OWNER, credential.id)
        db.delete(credential)
        db.flush()
