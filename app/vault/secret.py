"""A string that will not show itself by accident (after starlette's ``Secret``).

Logs, tracebacks with locals, f-strings and debug reprs all go through ``repr``/``str``/``format``;
making those print a mask means the only way to the plaintext is the explicit :meth:`Secret.reveal`.
"""

from __future__ import annotations

import hmac
from typing import Any, NoReturn

MASK = "**********"


class Secret:
    __slots__ = ("_value",)
    _value: str

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"Secret wraps a str, got {type(value).__name__}")
        object.__setattr__(self, "_value", value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, format_spec: str) -> str:
        return MASK

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        # Constant time, so comparing a submitted value to a stored one does not leak a prefix.
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    # Hashing would make secrets usable as dict keys, which invites lookups by plaintext; keep it off.
    __hash__ = None  # type: ignore[assignment]

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError("Secret is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("Secret is immutable")

    # Pickle (and so caches, queues and multiprocessing) would carry the plaintext in its bytes.
    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret cannot be pickled; reveal() it deliberately if it must cross a boundary")

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self
