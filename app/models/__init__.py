"""All models, imported here so Alembic and the app see one metadata."""

from app.models.accounts import ConnectedAccount
from app.models.audit import AuditEvent
from app.models.base import Base, utcnow
from app.models.credentials import Credential, MfaPolicy, WebAuthnChallenge
from app.models.dialogs import DialogToken
from app.models.idempotency import IdempotencyRecord
from app.models.mail import MailOutbox
from app.models.oauth import OAuthIdentity
from app.models.oidc import (
    OidcAuthorizationCode,
    OidcClient,
    OidcConsent,
    OidcLogoutDelivery,
    OidcSessionClient,
    OidcSigningKey,
    OidcToken,
)
from app.models.providers import ProviderConfig
from app.models.secrets import StoredSecret
from app.models.service_tokens import ServiceToken
from app.models.sessions import TrustedBrowser, UserSession
from app.models.tokens import LinkToken
from app.models.users import ROLES, User
from app.models.webhooks import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent

__all__ = [
    "ROLES",
    "AuditEvent",
    "Base",
    "ConnectedAccount",
    "Credential",
    "DialogToken",
    "IdempotencyRecord",
    "LinkToken",
    "MailOutbox",
    "MfaPolicy",
    "OAuthIdentity",
    "OidcAuthorizationCode",
    "OidcClient",
    "OidcConsent",
    "OidcLogoutDelivery",
    "OidcSessionClient",
    "OidcSigningKey",
    "OidcToken",
    "ProviderConfig",
    "ServiceToken",
    "StoredSecret",
    "TrustedBrowser",
    "User",
    "UserSession",
    "WebAuthnChallenge",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
    "utcnow",
]
