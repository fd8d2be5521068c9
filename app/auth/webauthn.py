"""Passkeys and security keys (WebAuthn Level 3, via py_webauthn): registration, second-factor and
passwordless sign-in.

The relying party is derived from AMI_AUTH_BASE_URL: rp_id is its host name, the expected origin its
scheme://host:port. Challenges are stored server-side and deleted when a response is checked, so each is
used at most once; the random handle naming a challenge is also kept in the browser's session.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import (
    options_to_json_dict,
    parse_authentication_credential_json,
    parse_registration_credential_json,
)
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from app.errors import N_, AppError
from app.i18n import gettext
from app.models import Credential, User, WebAuthnChallenge, utcnow
from app.models.credentials import ChallengePurpose
from app.settings import Settings

RP_NAME = "AMI Auth"
CHALLENGE_TTL = timedelta(minutes=5)
# What the browser is told (ms); the server-side challenge lives a little longer than this.
CEREMONY_TIMEOUT_MS = 180_000
NAME_MAX = 100
_TRANSPORTS = {t.value for t in AuthenticatorTransport}


def rp_id(settings: Settings) -> str:
    host = urlsplit(settings.base_url).hostname
    assert host, "AMI_AUTH_BASE_URL is validated to have a host"
    return host


def expected_origin(settings: Settings) -> str:
    parts = urlsplit(settings.base_url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True)
class Ceremony:
    """Options for the browser, and the handle of the stored challenge they carry."""

    handle: str
    public_key: dict[str, Any]


def _issue_challenge(
    db: Session,
    purpose: ChallengePurpose,
    user_id: int | None,
    challenge: bytes,
    handle_for_user: bytes | None = None,
) -> str:
    now = utcnow()
    # Expired challenges are garbage; dropping them here keeps the table small without a job.
    db.execute(delete(WebAuthnChallenge).where(WebAuthnChallenge.expires_at < now))
    handle = secrets.token_urlsafe(32)
    db.add(
        WebAuthnChallenge(
            id=handle,
            purpose=purpose,
            user_id=user_id,
            challenge=challenge,
            user_handle=handle_for_user,
            created_at=now,
            expires_at=now + CHALLENGE_TTL,
        )
    )
    db.flush()
    return handle


def consume_challenge(
    db: Session, handle: str | None, purpose: ChallengePurpose, user_id: int | None
) -> WebAuthnChallenge:
    """The stored challenge for ``handle``, deleted in the same step (a replayed response finds nothing)."""
    expired = AppError(
        "token_expired",
        N_("The passkey request expired or was already used."),
        N_("Try again; the browser will ask for your passkey once more."),
    )
    if not handle:
        raise expired
    row = db.get(WebAuthnChallenge, handle)
    if row is None:
        raise expired
    db.expunge(row)
    result = db.execute(delete(WebAuthnChallenge).where(WebAuthnChallenge.id == handle))
    # Deleted by this request, for this purpose and this user, and still fresh: anything else is refused.
    if (
        getattr(result, "rowcount", 0) != 1
        or row.purpose != purpose
        or row.user_id != user_id
        or row.expires_at <= utcnow()
    ):
        raise expired
    return row


def _descriptors(credentials: list[Credential]) -> list[PublicKeyCredentialDescriptor]:
    return [
        PublicKeyCredentialDescriptor(
            id=c.credential_id,
            transports=[AuthenticatorTransport(t) for t in c.transports if t in _TRANSPORTS] or None,
        )
        for c in credentials
        if c.credential_id is not None
    ]


def passkeys(db: Session, user_id: int) -> list[Credential]:
    return list(
        db.scalars(
            select(Credential)
            .where(Credential.user_id == user_id, Credential.kind == "webauthn")
            .order_by(Credential.created_at, Credential.id)
        )
    )


def user_handle(db: Session, user_id: int) -> bytes:
    """The WebAuthn user.id for a user: random (not the database id, WebAuthn §14.6.1), and the same for all
    of their credentials so an authenticator keeps one passkey per account."""
    existing = db.scalar(
        select(Credential.user_handle)
        .where(Credential.user_id == user_id, Credential.kind == "webauthn", Credential.user_handle.is_not(None))
        .limit(1)
    )
    return existing if existing is not None else secrets.token_bytes(32)


def check_name(raw: str | None) -> str:
    name = " ".join((raw or "").split())
    if len(name) > NAME_MAX:
        raise AppError(
            "validation_failed", fields={"name": N_("Use at most %(name_max)s characters.", name_max=NAME_MAX)}
        )
    return name


# --- Registration -----------------------------------------------------------------------------------------


def begin_registration(db: Session, settings: Settings, user: User) -> Ceremony:
    existing = passkeys(db, user.id)
    handle_for_user = user_handle(db, user.id)
    options = generate_registration_options(
        rp_id=rp_id(settings),
        rp_name=RP_NAME,
        user_name=user.email,
        user_id=handle_for_user,
        user_display_name=user.display_name or user.email,
        timeout=CEREMONY_TIMEOUT_MS,
        authenticator_selection=AuthenticatorSelectionCriteria(
            # Preferred, not required: a security key without storage still works as a second factor.
            resident_key=ResidentKeyRequirement.PREFERRED,
            user_verification=UserVerificationRequirement.PREFERRED,
        ),
        # WebAuthn §5.4: keeps the same authenticator from being registered twice.
        exclude_credentials=_descriptors(existing),
    )
    handle = _issue_challenge(db, "register", user.id, options.challenge, handle_for_user)
    return Ceremony(handle, options_to_json_dict(options))


def finish_registration(
    db: Session, settings: Settings, user: User, handle: str | None, response: Any, name: str | None
) -> Credential:
    clean_name = check_name(name)
    stored = consume_challenge(db, handle, "register", user.id)
    try:
        parsed = parse_registration_credential_json(response)
        verified = verify_registration_response(
            credential=parsed,
            expected_challenge=stored.challenge,
            expected_rp_id=rp_id(settings),
            expected_origin=expected_origin(settings),
            require_user_verification=False,
        )
    except WebAuthnException as exc:
        raise AppError(
            "invalid_credentials",
            N_("The passkey could not be registered."),
            N_("Try again with the same or another authenticator."),
            fields={"credential": str(exc)[:200]},
        ) from None
    if db.scalar(select(Credential.id).where(Credential.credential_id == verified.credential_id)) is not None:
        raise AppError("conflict", N_("That passkey is already registered."), N_("Use another authenticator."))
    count = len(passkeys(db, user.id))
    now = utcnow()
    transports = [t.value for t in (parsed.response.transports or [])]
    credential = Credential(
        user_id=user.id,
        kind="webauthn",
        name=clean_name or gettext("Passkey %(number)s", number=count + 1),  # a name to change, in their language
        credential_id=verified.credential_id,
        public_key=verified.credential_public_key,
        sign_count=verified.sign_count,
        transports=transports,
        aaguid=verified.aaguid,
        user_handle=stored.user_handle,
        backed_up=verified.credential_backed_up,
        created_at=now,
        confirmed_at=now,
    )
    db.add(credential)
    db.flush()
    return credential


# --- Authentication ---------------------------------------------------------------------------------------


def begin_authentication(db: Session, settings: Settings, user: User | None) -> Ceremony:
    """Second factor (``user`` given: their credentials, UV preferred) or passwordless (``user`` None: empty
    allowCredentials so the authenticator offers its discoverable credentials, UV required)."""
    if user is not None:
        options = generate_authentication_options(
            rp_id=rp_id(settings),
            timeout=CEREMONY_TIMEOUT_MS,
            allow_credentials=_descriptors(passkeys(db, user.id)),
            user_verification=UserVerificationRequirement.PREFERRED,
        )
        purpose: ChallengePurpose = "second_factor"
    else:
        options = generate_authentication_options(
            rp_id=rp_id(settings),
            timeout=CEREMONY_TIMEOUT_MS,
            allow_credentials=[],
            user_verification=UserVerificationRequirement.REQUIRED,
        )
        purpose = "passwordless"
    handle = _issue_challenge(db, purpose, user.id if user else None, options.challenge)
    return Ceremony(handle, options_to_json_dict(options))


@dataclass(frozen=True)
class Assertion:
    credential: Credential
    user_verified: bool


def finish_authentication(
    db: Session, settings: Settings, handle: str | None, response: Any, *, user: User | None
) -> Assertion:
    """Verify an assertion. With ``user`` it must be one of theirs; without, it is passwordless: the credential
    names its owner, whose userHandle must match, and user verification is required (WebAuthn §7.2 step 6)."""
    purpose: ChallengePurpose = "second_factor" if user is not None else "passwordless"
    stored = consume_challenge(db, handle, purpose, user.id if user else None)
    refused = AppError(
        "invalid_credentials",
        N_("That passkey was not accepted."),
        N_("Use a passkey registered to this account, or choose another way to sign in."),
    )
    try:
        parsed = parse_authentication_credential_json(response)
    except WebAuthnException:
        raise refused from None
    credential = db.scalar(
        select(Credential).where(Credential.credential_id == parsed.raw_id, Credential.kind == "webauthn")
    )
    if credential is None or credential.public_key is None:
        raise refused
    if user is not None and credential.user_id != user.id:
        raise refused
    if user is None:
        returned = parsed.response.user_handle
        if returned is None or credential.user_handle is None or returned != credential.user_handle:
            raise refused
    try:
        verified = verify_authentication_response(
            credential=parsed,
            expected_challenge=stored.challenge,
            expected_rp_id=rp_id(settings),
            expected_origin=expected_origin(settings),
            credential_public_key=credential.public_key,
            # WebAuthn §7.2 step 22: when either counter is non-zero, the new one must be greater; an
            # authenticator that goes backwards may be a clone. py_webauthn raises on that.
            credential_current_sign_count=credential.sign_count,
            require_user_verification=user is None,
        )
    except WebAuthnException as exc:
        raise AppError(refused.code, refused.message, refused.hint, fields={"credential": str(exc)[:200]}) from None
    new_count = verified.new_sign_count
    # Compare-and-set: a concurrent sign-in that already stored a higher counter makes this one a regression.
    result = db.execute(
        update(Credential)
        .where(Credential.id == credential.id, or_(Credential.sign_count < new_count, Credential.sign_count == 0))
        .values(sign_count=new_count, last_used_at=utcnow(), backed_up=verified.credential_backed_up)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        raise AppError(refused.code, refused.message, refused.hint, fields={"credential": N_("sign count went back")})
    db.refresh(credential)
    return Assertion(credential, verified.user_verified)


def rename(db: Session, user: User, credential_id: int, name: str | None) -> Credential:
    credential = get_passkey(db, user, credential_id)
    clean = check_name(name)
    if not clean:
        raise AppError("validation_failed", fields={"name": N_("Enter a name.")})
    credential.name = clean
    db.flush()
    return credential


def get_passkey(db: Session, user: User, credential_id: int) -> Credential:
    credential = db.get(Credential, credential_id)
    if credential is None or credential.user_id != user.id or credential.kind != "webauthn":
        raise AppError("not_found", N_("That passkey does not exist."), N_("It may have been removed already."))
    return credential
