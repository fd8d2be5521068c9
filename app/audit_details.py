"""What an audit event's details may hold: credentials redacted, values normalised to JSON, at any depth.

Split from :mod:`app.audit` (which hashes and stores events) because the rule for *what* is stored is
its own concern: :func:`sanitize_details` is the one gate every detail passes before it is hashed.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from pathlib import PurePath
from typing import Any, Final
from uuid import UUID

__all__ = ["REDACTED", "canonical_json", "sanitize_details"]

REDACTED: Final = "[redacted]"
# The Secret type (app.vault.secret) and MasterKey print this mask instead of their value.
_MASK: Final = "**********"
# Key names whose values are credentials. Booleans and None say whether something exists, not what it
# is ("password_changed": True), so they are kept.
_SECRET_KEY: Final = re.compile(
    r"password|passphrase|secret|token|api_key|authorization|cookie|recovery_code|otp|totp_code|key$", re.IGNORECASE
)
_MAX_DEPTH: Final = 32


def canonical_json(value: object) -> str:
    # ASCII-only and without spaces so the bytes do not depend on the platform or the JSON library's
    # defaults; NaN is not JSON, and sanitize_details has already turned it into a string.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


# --- sanitising details --------------------------------------------------------------------------


def sanitize_details(details: Mapping[Any, object]) -> dict[str, Any]:
    """A JSON-ready copy of ``details`` with credentials replaced by ``"[redacted]"``.

    Redacted: the value of any key matching password/secret/token/api_key/authorization/cookie/…key
    (at any depth, unless the value is a bool or None), and any object whose repr shows the Secret mask.
    Normalised: datetimes/dates/times to ISO strings (aware datetimes in UTC), timedeltas to seconds,
    Decimal/UUID/paths/IP addresses to strings, enums to their value, tuples to lists, sets to sorted
    lists, NaN/infinity to strings. Bytes become "[N bytes]" because raw bytes in an audit detail are far
    more often key material than anything a reader needs. Any other type raises ``TypeError``: guessing
    with ``str()`` could print a secret.
    """
    return _clean_mapping(details, "details", 0)


def _clean_mapping(mapping: Mapping[Any, object], path: str, depth: int) -> dict[str, Any]:
    if depth > _MAX_DEPTH:
        raise ValueError(f"audit details nest deeper than {_MAX_DEPTH} levels at {path}")
    cleaned: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(key, str):
            name = str.__str__(key)
        elif isinstance(key, int) and not isinstance(key, bool):
            name = str(int(key))
        else:
            raise TypeError(f"audit details: key {key!r} at {path} must be a str or an int")
        if _SECRET_KEY.search(name) and not (value is None or isinstance(value, bool)):
            cleaned[name] = REDACTED
        else:
            cleaned[name] = _clean_value(value, f"{path}.{name}", depth + 1)
    return cleaned


def _clean_value(value: object, path: str, depth: int) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if type(value) is str or type(value) is int:
        return value
    if type(value) is float:
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return _clean_mapping(value, path, depth)
    if isinstance(value, list | tuple):
        return [_clean_value(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, set | frozenset):
        items = [_clean_value(item, f"{path}[]", depth + 1) for item in value]
        return sorted(items, key=canonical_json)
    # After the containers (recursing redacts just the secret inside them) and before any conversion
    # that could reveal it: a str subclass could be a secret wrapper too.
    if _MASK in repr(value):
        return REDACTED
    if isinstance(value, Enum):
        return _clean_value(value.value, path, depth + 1)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _clean_value(float(value), path, depth)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat() if value.tzinfo is not None else value.isoformat()
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal | UUID | PurePath | ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"[{len(value)} bytes]"
    raise TypeError(f"audit details: cannot store a {type(value).__name__} at {path}; convert it first")
