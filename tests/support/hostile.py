"""Hostile input shared by the two fuzzers (tests/integration/test_form_fuzz.py and the OpenAPI one), and the
check every answer must pass: no 5xx, and a refusal in the taxonomy's shape."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Final

from werkzeug.test import TestResponse

from app.errors import TAXONOMY
from app.models.base import ID_MAX

# Ids a URL may carry that no 32-bit primary key can match, and spellings of "no id".
HOSTILE_IDS: Final = (ID_MAX + 1, 2**63, 10**40, 0, -1)
# Path segments for string arguments: NUL, invalid UTF-8 (a lone continuation byte), an over-long value.
HOSTILE_SEGMENTS: Final = ("a%00b", "%FF%FE", "%C3%28", "x" * 3000)
NUL: Final = "fuzz\x00value"
CONTROLS: Final = "\x01\x08\x0b\x0c\x1b[31m\x7f"
HUGE: Final = "A" * 5000
# Deeper than Python's recursion limit, and small enough (40 KB) to be parsed rather than refused for its size.
DEEP_JSON: Final = "[" * 20_000 + "]" * 20_000
DEEPISH_JSON: Final = '{"a":' * 200 + "1" + "}" * 200

# The OpenID Provider's protocol endpoints (token, userinfo, revocation, introspection) answer errors in the shape
# their RFCs fix (RFC 6749 §5.2, RFC 6750 §3, RFC 7009 §2.2.1, RFC 7662 §2.3): {"error": "<code>", ...}.
OAUTH_ENDPOINTS: Final = "/oauth2/"
_OAUTH_ERROR: Final = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]+")

# The error page, and an alert that shows an AppError on a page, carry its code.
_ERROR_CODE: Final = re.compile(r'data-(?:error-)?code="([a-z_]+)"')


@dataclass
class Tally:
    """Every request a fuzzer sent, and what was wrong with the answers (5xx apart from the rest)."""

    sent: int = 0
    server_errors: list[str] = field(default_factory=list)
    bad_shapes: list[str] = field(default_factory=list)

    def check(self, label: str, response: TestResponse) -> None:
        self.sent += 1
        status = response.status_code
        if status >= 500:
            self.server_errors.append(f"{label} -> {status}")
            return
        if status < 400:
            return
        problem = error_shape_problem(response)
        if problem:
            self.bad_shapes.append(f"{label} -> {status}: {problem}")

    def summary(self, name: str) -> str:
        return f"{name}: {self.sent} requests, {len(self.server_errors)} x 5xx, {len(self.bad_shapes)} off-taxonomy"

    def assert_clean(self, name: str) -> None:
        print(self.summary(name))  # the figure the issue asks for, shown with pytest -s
        assert not (self.server_errors or self.bad_shapes), (
            self.summary(name) + "\n" + "\n".join(self.server_errors[:400] + self.bad_shapes[:400])
        )
        assert not self.bad_shapes, self.summary(name) + "\n" + "\n".join(self.bad_shapes[:400])


def json_error_problem(body: Any) -> str | None:
    """Why ``body`` is not ``{"error": {"code", "message", "hint", "fields"}}`` with a taxonomy code, or None."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return "no error object"
    if error.get("code") not in TAXONOMY:
        return f"code {error.get('code')!r} is not in the taxonomy"
    if not isinstance(error.get("message"), str) or not isinstance(error.get("hint"), str):
        return "no message or hint"
    fields = error.get("fields")
    if not isinstance(fields, dict) or not all(isinstance(v, str) for v in fields.values()):
        return "fields is not a name -> message object"
    return None


def error_shape_problem(response: TestResponse) -> str | None:
    """A 4xx answer is the taxonomy's JSON, the error page (its code on the page), or a form whose field says
    what is wrong; anything else is a problem, returned as text."""
    if response.mimetype == "application/json" and response.request.path.startswith(OAUTH_ENDPOINTS):
        try:
            body = json.loads(response.get_data())
        except ValueError:
            return "JSON error answer that does not parse"
        error = body.get("error") if isinstance(body, dict) else None
        return None if isinstance(error, str) and _OAUTH_ERROR.fullmatch(error) else "not an RFC 6749 error"
    if response.mimetype == "application/json":
        try:
            return json_error_problem(json.loads(response.get_data()))
        except ValueError:
            return "JSON error answer that does not parse"
    if response.mimetype != "text/html":
        return f"a {response.mimetype or 'bodiless'} error answer"
    html = response.get_data(as_text=True)
    codes = _ERROR_CODE.findall(html)
    if codes:
        return None if all(code in TAXONOMY for code in codes) else f"codes {codes} outside the taxonomy"
    if 'class="error"' in html and "data-field=" in html:
        return None  # the form again, with the message on the field
    return "an HTML error answer with neither the error page nor a field error"
