"""Envelope encryption with AES-256-GCM and a key ring (the shape of Kratos' Cipher and Vault transit).

Each value gets its own random 256-bit data key (DEK). The DEK encrypts the payload; the active master
key encrypts ("wraps") the DEK. Rotating a master key then only needs the small wrapped DEK rewritten,
never the payload, and never the plaintext.

Associated data binds both layers: the payload to the caller's ``aad`` (its row), the wrap to ``aad``
plus the key id, so neither can be moved to another row nor relabelled with another key id.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.errors import AppError
from app.settings import MasterKey

ENVELOPE_VERSION = 1
NONCE_BYTES = 12  # NIST SP 800-38D: 96-bit nonces are the efficient, recommended size for GCM
TAG_BYTES = 16
KEY_BYTES = 32


class SecretUnreadable(AppError):
    """A stored value could not be decrypted: its key is missing or wrong, or its bytes were altered."""

    def __init__(self, key_id: str, reason: str) -> None:
        super().__init__("secret_unreadable", f"A stored secret on key {key_id!r} could not be decrypted: {reason}.")
        self.key_id = key_id
        self.reason = reason

    def __reduce__(self) -> tuple[type[SecretUnreadable], tuple[str, str]]:
        # Exceptions pickle via ``args``; rebuild from our own arguments so workers can re-raise it.
        return (SecretUnreadable, (self.key_id, self.reason))


@dataclass(frozen=True, slots=True)
class Envelope:
    """What is stored for one value. ``wrapped_key`` and ``ciphertext`` each start with their nonce."""

    key_id: str
    version: int
    wrapped_key: bytes = field(repr=False)
    ciphertext: bytes = field(repr=False)


def _kid_suffix(kid: str) -> bytes:
    # Wrap AAD = aad || kid || len(kid). The trailing length keeps the split unambiguous, so no
    # (aad, kid) pair can be re-cut into another pair with the same bytes.
    encoded = kid.encode()
    return encoded + len(encoded).to_bytes(1, "big")


class Cipher:
    """A key ring: the first key encrypts, every key decrypts."""

    __slots__ = ("_active", "_active_aead", "_active_suffix", "_ring")

    def __init__(self, keys: tuple[MasterKey, ...]) -> None:
        if not keys:
            raise ValueError("Cipher needs at least one master key")
        ring: dict[str, tuple[AESGCM, bytes]] = {}
        for key in keys:
            if key.kid in ring:
                raise ValueError(f"master key id {key.kid!r} appears twice")
            if len(key.key) != KEY_BYTES:
                raise ValueError(f"master key {key.kid!r} must be {KEY_BYTES} bytes")
            if len(key.kid.encode()) > 255:
                raise ValueError(f"master key id {key.kid!r} is too long")
            ring[key.kid] = (AESGCM(key.key), _kid_suffix(key.kid))
        self._ring = ring
        self._active = keys[0].kid
        self._active_aead, self._active_suffix = ring[self._active]

    def __repr__(self) -> str:
        return f"Cipher(active={self._active!r}, key_ids={self.key_ids!r})"

    @property
    def active_kid(self) -> str:
        return self._active

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._ring)

    def encrypt(self, plaintext: bytes, aad: bytes) -> Envelope:
        dek = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = nonce + AESGCM(dek).encrypt(nonce, plaintext, aad)
        return Envelope(self._active, ENVELOPE_VERSION, self._wrap(dek, aad), ciphertext)

    def decrypt(self, env: Envelope, aad: bytes) -> bytes:
        dek = self._unwrap(env.key_id, env.version, env.wrapped_key, aad)
        ct = env.ciphertext
        if len(ct) < NONCE_BYTES + TAG_BYTES:
            raise SecretUnreadable(env.key_id, "the ciphertext is truncated")
        try:
            return AESGCM(dek).decrypt(ct[:NONCE_BYTES], ct[NONCE_BYTES:], aad)
        except InvalidTag:
            raise SecretUnreadable(env.key_id, "the ciphertext was altered or belongs to another row") from None

    def rewrap(self, env: Envelope, aad: bytes) -> Envelope:
        """The same payload with its data key wrapped by the active key; the plaintext is never produced."""
        wrapped = self.rewrap_key(env.key_id, env.version, env.wrapped_key, aad)
        return Envelope(self._active, ENVELOPE_VERSION, wrapped, env.ciphertext)

    def rewrap_key(self, key_id: str, version: int, wrapped_key: bytes, aad: bytes) -> bytes:
        """Just the new wrapped data key (on :attr:`active_kid`, :data:`ENVELOPE_VERSION`).

        For bulk rewrap, which then never has to read the payload or build envelopes.
        """
        return self._wrap(self._unwrap(key_id, version, wrapped_key, aad), aad)

    def _wrap(self, dek: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._active_aead.encrypt(nonce, dek, aad + self._active_suffix)

    def _unwrap(self, key_id: str, version: int, wrapped: bytes, aad: bytes) -> bytes:
        if version != ENVELOPE_VERSION:
            raise SecretUnreadable(key_id, f"envelope version {version} is not supported")
        entry = self._ring.get(key_id)
        if entry is None:
            raise SecretUnreadable(key_id, "that key id is not configured in AMI_AUTH_MASTER_KEYS")
        if len(wrapped) != NONCE_BYTES + KEY_BYTES + TAG_BYTES:
            raise SecretUnreadable(key_id, "the wrapped data key has the wrong length")
        aead, suffix = entry
        try:
            return aead.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], aad + suffix)
        except InvalidTag:
            raise SecretUnreadable(
                key_id, "the key does not match, or the wrapped data key was altered or moved"
            ) from None
