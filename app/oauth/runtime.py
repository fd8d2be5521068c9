"""The app's side of the OAuth code: its services (:class:`OAuthRuntime`, built once per app by
:func:`runtime`), the redirect URI, and a provider built from a stored config (:func:`build_provider`:
secrets from the vault, metadata from the app's cache). Views, jobs and the CLI pass the runtime down; the
protocol core and the catalog glue below never see Flask or the database.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from flask import Flask
from sqlalchemy.orm import Session

from app.extensions import end_read, get_cipher, get_settings
from app.models import ProviderConfig
from app.net import OutboundClient, get_client
from app.oauth.discovery import DiscoveryCache, ProviderMetadata
from app.oauth.provider import OAuthProvider, provider_from_values
from app.providers.configs import read_secrets
from app.providers.registry import entry as catalog_entry
from app.settings import Settings
from app.vault import Cipher

__all__ = ["MAIL_EXTENSION", "Mail", "OAuthRuntime", "build_provider", "callback_path", "redirect_uri", "runtime"]

# (session, to, subject, text) → sends one mail, or raises AppError. The app factory puts the mailer here
# (app/connectors/wiring.py): the OAuth code tells an account's owner about it without importing the
# connectors, which sit above it.
Mail = Callable[[Session, str, str, str], None]
MAIL_EXTENSION: Final = "ami_oauth_mail"
_DISCOVERY_EXTENSION: Final = "ami_oauth_discovery"
_create_lock = threading.Lock()


@dataclass(frozen=True)
class OAuthRuntime:
    """What the OAuth logic needs from the app: settings, the vault cipher, the one HTTP client, the app's
    discovery/JWKS cache, and a way to mail an account's owner (None: no mail is sent)."""

    settings: Settings
    cipher: Cipher
    client: OutboundClient
    cache: DiscoveryCache
    mail: Mail | None = None


def runtime(app: Flask) -> OAuthRuntime:
    """The app's runtime; the discovery cache is created once per app and shared by every thread."""
    client = get_client(app)
    cache = app.extensions.get(_DISCOVERY_EXTENSION)
    if cache is None:
        with _create_lock:
            cache = app.extensions.get(_DISCOVERY_EXTENSION)
            if cache is None:
                cache = DiscoveryCache(client)
                app.extensions[_DISCOVERY_EXTENSION] = cache
    assert isinstance(cache, DiscoveryCache)
    return OAuthRuntime(get_settings(app), get_cipher(app), client, cache, app.extensions.get(MAIL_EXTENSION))


def callback_path(config_id: int) -> str:
    return f"/oauth/{config_id}/callback"


def redirect_uri(settings: Settings, config_id: int) -> str:
    """The one redirect URI of a provider config (sign-in and connect share it): what the admin registers."""
    return settings.base_url.rstrip("/") + callback_path(config_id)


def build_provider(db: Session, rt: OAuthRuntime, cfg: ProviderConfig) -> OAuthProvider:
    """The provider for a stored config: secrets from the vault, metadata from the app's cache.

    Ends the session's read (:func:`app.extensions.end_read`) once the config and its secrets are read, before
    the metadata may be fetched: a provider slow to answer its discovery URL (every thread asking waits on that
    one fetch) would otherwise hold a pooled connection per request or job waiting on it.
    """
    entry = catalog_entry(cfg.provider_type)
    secrets = read_secrets(db, rt.cipher, entry, cfg)
    config_id, name, stored = cfg.id, cfg.name, cfg.config or {}
    end_read(db)

    def cached(issuer: str, discovery_url: str | None) -> ProviderMetadata:
        return rt.cache.metadata(issuer, discovery_url=discovery_url)

    return provider_from_values(entry, config_id, name, stored, secrets, discover_with=cached, keys=rt.cache)
