"""Reading JSON request bodies and query parameters for the API, with taxonomy errors on the right field.

Every problem is a ``validation_failed`` whose ``fields`` name the body key or query parameter, so a
client can put the message next to the input that caused it. Field names of nested objects are dotted
(``config.client_id``).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any, Final

from flask import request

from app.errors import AppError
from app.models.base import ID_MAX

_DIGITS: Final = re.compile(r"[0-9]{1,10}")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def json_object(*, allowed: Collection[str], required: Collection[str] = ()) -> dict[str, Any]:
    """The request body as a JSON object; unknown and missing keys are refused, each on its own name."""
    data = json_body()
    check_keys(data, allowed=allowed, required=required)
    return data


def json_body() -> dict[str, Any]:
    """The request body as a JSON object, its keys not checked yet (:func:`check_keys`)."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise AppError(
            "validation_failed",
            "The request body must be a JSON object.",
            'Send Content-Type: application/json and a body like {"name": …}.',
        )
    return data


def check_keys(data: Mapping[str, Any], *, allowed: Collection[str], required: Collection[str] = ()) -> None:
    """Refuse unknown and missing keys, each on its own name."""
    errors = {key[:80]: "This is not a field of this request." for key in data if key not in allowed}
    errors.update({key: "This field is required." for key in required if key not in data})
    if errors:
        raise AppError("validation_failed", fields=errors)


def body_id(data: Mapping[str, Any], key: str) -> int:
    """A positive integer id from the body (booleans are not numbers here, whatever Python thinks)."""
    value = data.get(key)
    # JSON Schema counts 7.0 as an integer, and so do we.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= ID_MAX:
        raise AppError("validation_failed", fields={key: f"Use an id: a whole number from 1 to {ID_MAX}."})
    return value


def query_id(name: str) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= ID_MAX:
        raise AppError("validation_failed", fields={name: f"Use an id: a whole number from 1 to {ID_MAX}."})
    return int(raw)


def query_bool(name: str) -> bool | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    if raw in ("true", "false"):
        return raw == "true"
    raise AppError("validation_failed", fields={name: "Use true or false."})


def query_choice(name: str, choices: Collection[str]) -> str | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    if raw not in choices:
        raise AppError("validation_failed", fields={name: "Use one of: " + ", ".join(sorted(choices)) + "."})
    return raw


def query_int(name: str, *, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        raise AppError("validation_failed", fields={name: f"Use a whole number from {low} to {high}."})
    return int(raw)


def plain_text(value: object, key: str, *, max_length: int) -> str:
    """A one-line string field: text, no control characters (PostgreSQL refuses NUL in text)."""
    if not isinstance(value, str):
        raise AppError("validation_failed", fields={key: "Use text here."})
    if _CONTROL.search(value):
        raise AppError("validation_failed", fields={key: "Remove line breaks and control characters."})
    if len(value) > max_length:
        raise AppError("validation_failed", fields={key: f"Use at most {max_length} characters."})
    return value
