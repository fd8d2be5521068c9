"""Views whose request body is not theirs to read: the credential-injecting proxy passes it on as it arrives.

The input guard (``app.web.input_guard``) reads and checks every body before the view runs (JSON under /api);
a view marked :func:`streams_body` is skipped, so its body stays unread and can stream to the upstream
without being held in memory. Such a view bounds the body itself (``request.max_content_length``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeVar

__all__ = ["is_streamed", "streams_body"]

F = TypeVar("F", bound=Callable[..., Any])
_ATTRIBUTE: Final = "__ami_streams_body__"


def streams_body(view: F) -> F:
    setattr(view, _ATTRIBUTE, True)
    return view


def is_streamed(view: object) -> bool:
    return bool(getattr(view, _ATTRIBUTE, False))
