"""Single-use links to a secure dialog, issued to the CMS (``POST /api/account-manager/dialogs``)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, utcnow

DialogKind = Literal["add_account", "replace_secret", "edit_provider_config", "connect_account"]
DialogOutcome = Literal["saved", "cancelled", "failed"]


class DialogToken(Base):
    __tablename__ = "dialog_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    # SHA-256 (hex) of the token in the link; the token itself is never stored (32 random bytes, so a fast
    # hash is enough, as for service tokens).
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(30))
    # What the dialog edits. Deleting the config or account deletes its pending links with it.
    provider_config_id: Mapped[int | None] = mapped_column(
        ForeignKey("provider_configs.id", ondelete="CASCADE"), index=True
    )
    account_id: Mapped[int | None] = mapped_column(ForeignKey("connected_accounts.id", ondelete="CASCADE"), index=True)
    # Where the dialog sends the browser back to; checked against AMI_AUTH_CMS_ORIGINS when issued and again
    # when used (the allow-list may have changed meanwhile).
    return_to: Mapped[str] = mapped_column(String(2000))
    # connect_account: the end user the link is for; only their session can open it, and the account is theirs.
    for_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # Who asked for the link: the audit actor ("service_token:3" or an admin's email).
    issued_by: Mapped[str] = mapped_column(String(320), default="")
    # No foreign key: service tokens are revoked, never deleted, and the migration then needs only 0001.
    service_token_id: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    # The first admin session that opened the link owns it: nobody else can open it afterwards.
    opened_at: Mapped[datetime | None]
    opened_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    opened_session: Mapped[str | None] = mapped_column(String(64))
    # Set once, by "Save" or "Cancel" (or an OAuth connect link's callback, "failed" included): the link is spent.
    used_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(20))
    # The account the dialog saved (a new one for add_account); a plain number, the account may go later.
    result_account_id: Mapped[int | None]

    def __repr__(self) -> str:
        return f"DialogToken(id={self.id!r}, kind={self.kind!r})"
