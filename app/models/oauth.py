"""Provider identities linked to AMI users for "Continue with <provider>" sign-in.

One row says: the account ``subject`` at provider config ``provider_config_id`` signs in as ``user_id``.
The pair (config, subject) is unique, so one provider account can never sign in as two AMI users.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.accounts import ConnectedAccount
from app.models.base import Base, utcnow


class OAuthIdentity(Base):
    __tablename__ = "oauth_identities"
    __table_args__ = (UniqueConstraint("provider_config_id", "subject", name="uq_oauth_identities_config_subject"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    provider_config_id: Mapped[int] = mapped_column(ForeignKey("provider_configs.id", ondelete="CASCADE"))
    subject: Mapped[str] = mapped_column(String(255))
    # The address the provider gave when the identity was linked (shown to the user; not used to match).
    email: Mapped[str] = mapped_column(String(320), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]


# The refresh job's query: `status = 'active' AND expires_at <= :horizon`. With status first, the range
# scan covers only live accounts that are due; accounts that wait for consent or were expired for good
# keep their old expires_at and would otherwise pile up inside the range over the years. Declared here
# (with the migration that adds it) so ConnectedAccount's module stays with its owner.
REFRESH_DUE_INDEX = Index(
    "ix_connected_accounts_refresh_due", ConnectedAccount.__table__.c.status, ConnectedAccount.__table__.c.expires_at
)
