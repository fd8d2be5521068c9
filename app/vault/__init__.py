"""The secret vault: AES-256-GCM envelope encryption with a key ring, and encrypted rows in ``secrets``.

Its command group (``ami-auth keys …``) is a face and lives beside the others, in :mod:`app.keys_cli`.
"""

from app.vault.cipher import Cipher, Envelope, SecretUnreadable
from app.vault.secret import Secret
from app.vault.store import (
    SecretMeta,
    SessionFactory,
    aad_for,
    delete_secrets,
    get_secret,
    has_secret,
    key_status,
    purge_retired,
    put_secret,
    restore_previous,
    rewrap,
    rewrap_pending,
    secret_meta,
    unopened_keys,
)

__all__ = [
    "Cipher",
    "Envelope",
    "Secret",
    "SecretMeta",
    "SecretUnreadable",
    "SessionFactory",
    "aad_for",
    "delete_secrets",
    "get_secret",
    "has_secret",
    "key_status",
    "purge_retired",
    "put_secret",
    "restore_previous",
    "rewrap",
    "rewrap_pending",
    "secret_meta",
    "unopened_keys",
]
