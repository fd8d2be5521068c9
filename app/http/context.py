"""Who is asking: the signed-in session as this request found it, the client's address and user agent, and
the audit context built from them. Both faces read these (:mod:`app.web`, :mod:`app.api`)."""

from __future__ import annotations

from flask import g, request
from flask_login import UserMixin, current_user

from app.audit import AuditContext
from app.auth.mfa import MfaState
from app.auth.sessions import LiveSession, live_view
from app.errors import AppError
from app.extensions import db_session
from app.models import User, UserSession


class SignedIn(UserMixin):  # type: ignore[misc]
    """What Flask-Login holds for a request: the server-side session as this request found it.

    ``live`` is what the per-request checks read (session, user and second-factor state from one SELECT, see
    :func:`app.auth.sessions.load_session`). ``record`` and ``user`` are the ORM rows, loaded together on first
    use (one primary-key lookup) by the views that show or change them.
    """

    def __init__(self, raw_session_id: str, session: LiveSession | UserSession) -> None:
        self.raw_session_id = raw_session_id
        self._live: LiveSession | None = None
        self._record: UserSession | None = None
        self._user: User | None = None
        if isinstance(session, UserSession):  # the request that signs in already holds the rows
            self._record, self._user = session, session.user
        else:
            self._live = session

    @property
    def live(self) -> LiveSession:
        if self._live is None:
            assert self._record is not None
            self._live = live_view(db_session(), self._record)
        return self._live

    @property
    def mfa(self) -> MfaState:
        return self.live.mfa

    @property
    def record(self) -> UserSession:
        if self._record is None:
            record = db_session().get(UserSession, self.live.id)
            if record is None:  # deleted since the request began (its user was deleted)
                raise AppError("not_authenticated")
            self._record = record
        return self._record

    @property
    def user(self) -> User:
        if self._user is None:
            # The record comes with its user joined: one lookup gives a view both rows.
            self._user = self.record.user
        return self._user

    def get_id(self) -> str:
        return self.raw_session_id

    @property
    def id(self) -> int:
        return self.live.user.id

    @property
    def is_admin(self) -> bool:
        return self.live.user.is_admin

    @property
    def locale(self) -> str | None:
        """The language this user chose for pages and mails (app.i18n reads it); None: the browser's."""
        return self.live.user.locale


def signed_in() -> SignedIn | None:
    # A request without cookies (a service token's) has no session, unless this request signed someone in:
    # Flask-Login is not asked to find one (it would hash the client's address and agent to protect it).
    if not request.cookies and g.get("_login_user") is None:
        return None
    # One trip through the current_user proxy (every guard calls this; anonymous users are not SignedIn).
    value = current_user._get_current_object()
    return value if isinstance(value, SignedIn) else None


def client_ip() -> str:
    return (request.remote_addr or "")[:64]


def user_agent() -> str:
    return (request.user_agent.string or "")[:400]


def audit_ctx() -> AuditContext:
    who = signed_in()
    if who is not None:
        # Ids and emails never change, so the values read with the session are the ORM row's.
        person = who.live.user
        return AuditContext(actor=person.email, actor_id=person.id, ip=client_ip(), user_agent=user_agent())
    return AuditContext(actor="anonymous", ip=client_ip(), user_agent=user_agent())
