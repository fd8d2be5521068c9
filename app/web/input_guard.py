"""Hostile input refused once, at the door, for every route: HTML pages, forms and the JSON API alike.

Before any view runs (after the CSRF check, so a refused form still had to come from this site):

* **ids in URLs** - every ``<int:…>`` is :class:`IdConverter`: 1 to ``ID_MAX``, ASCII digits, else the route
  does not match (404 ``not_found``). A 32-bit primary key cannot hold more, and PostgreSQL refuses the query.
* **text** - the path, the query string, form fields and JSON strings must be UTF-8 without C0 control
  characters (tab, CR and LF excepted, which textareas legitimately send). NUL in particular: PostgreSQL
  refuses it in text, so it would fail the query (and the audit write) rather than the check.
  Request headers hold no control character at all but tab (RFC 9110 section 5.5).
* **shape** - a form route takes ``application/x-www-form-urlencoded`` or ``multipart/form-data`` with text
  parts only, each field once (unless a form declares it multi-valued); a JSON route (the API, and views
  marked :func:`accepts_json`) takes UTF-8 JSON (RFC 8259 section 8.1) of at most :data:`JSON_MAX_BYTES`,
  nested at most :data:`JSON_MAX_DEPTH` deep, without duplicate keys (RFC 7493 section 2.3) or NaN.

A refusal is ``validation_failed`` (400 for the address and headers, 413 too large, 415 wrong content type,
422 for a field), naming the field where one can be blamed. A refused state-changing request is audited as
``input.refused`` (names and reasons, never the values), at most :data:`REFUSALS_AUDITED_PER_MINUTE` per
client network so a flood of garbage cannot flood the audit chain.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, Final, ParamSpec, TypeVar
from urllib.parse import unquote_to_bytes

import flask
from flask import Flask, current_app, request
from limits import RateLimitItemPerMinute
from limits.strategies import MovingWindowRateLimiter
from werkzeug.http import parse_options_header
from werkzeug.routing import IntegerConverter, Map
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData
from wtforms import Form, SelectMultipleField
from wtforms.fields.core import UnboundField

from app import audit
from app.auth.throttle import ip_bucket
from app.errors import N_, AppError
from app.extensions import db_session, get_limit_storage
from app.http.context import audit_ctx, client_ip
from app.http.streaming import is_streamed
from app.models.base import ID_MAX

__all__ = [
    "JSON_MAX_BYTES",
    "JSON_MAX_DEPTH",
    "REFUSALS_AUDITED_PER_MINUTE",
    "IdConverter",
    "Request",
    "accepts_json",
    "init_input_guard",
    "multi_valued_fields",
]

log = logging.getLogger("ami_auth.input")

P = ParamSpec("P")
R = TypeVar("R")

JSON_MAX_BYTES: Final = 64 * 1024
JSON_MAX_DEPTH: Final = 32
REFUSALS_AUDITED_PER_MINUTE: Final = 10

SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_JSON_ROUTE: Final = "_ami_accepts_json"
# Text may carry tab, LF and CR (a textarea sends CRLF line ends); no other C0 control character, no DEL.
_TEXT_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# A name, a path or a header value: no control character at all (tab is allowed in header values only).
_ANY_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_HEADER_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_AUDIT_LIMIT: Final = RateLimitItemPerMinute(REFUSALS_AUDITED_PER_MINUTE, namespace="ami-input-refused")

# What the user is told, per reason: the field's message; the page's title and hint are built from it.
FIELD_MESSAGES: Final[dict[str, str]] = {
    "control_character": N_("Remove control characters (such as NUL or ESC) from this value."),
    "invalid_utf8": N_("This value is not UTF-8 text; type it again or paste it as plain text."),
    "file_part": N_("This field takes text, not a file."),
    "repeated": N_("Send this field once."),
    "json_duplicate_key": N_("This key appears more than once in its object; send it once."),
}


def _up_to(limit: int) -> str:
    """A regex for the integers 1..limit in canonical form (no sign, no leading zero)."""
    digits = str(limit)
    shorter = [f"[1-9][0-9]{{0,{len(digits) - 2}}}"] if len(digits) > 1 else []
    same_length = []
    for i, digit in enumerate(digits):
        low = 1 if i == 0 else 0
        if int(digit) > low:
            rest = len(digits) - i - 1
            same_length.append(f"{digits[:i]}[{low}-{int(digit) - 1}]" + (f"[0-9]{{{rest}}}" if rest else ""))
    return "|".join([*shorter, *same_length, digits])


class IdConverter(IntegerConverter):
    """``<int:name>`` in every route: a database id, 1 to ID_MAX, in ASCII digits; anything else is no match.

    The bound is in the regex, not only in ``to_python``: werkzeug checks the method before converting, so a
    value the regex accepted and the conversion refused would answer 405 where another method's rule has the
    same path. (``\\d`` would also match other scripts' digits, which ``int()`` reads.)
    """

    regex = f"(?:{_up_to(ID_MAX)})"

    def __init__(self, map: Map, fixed_digits: int = 0, min: int = 1, max: int = ID_MAX, signed: bool = False) -> None:
        super().__init__(map, fixed_digits, min, max, signed=False)


class Request(flask.Request):
    """Flask's request, keeping the raw body when the form is parsed (CSRFProtect parses it before the guard
    runs, and the guard checks the bytes: decoded values no longer show invalid UTF-8)."""

    def _load_form_data(self) -> None:
        # Bounded by MAX_CONTENT_LENGTH (413 beyond); the form is then parsed from the cached bytes.
        self.get_data(cache=True, parse_form_data=False)
        super()._load_form_data()


def accepts_json(view: Callable[P, R]) -> Callable[P, R]:
    """Mark an HTML-side view whose body is JSON (a WebAuthn ceremony's fetch), not a form."""
    setattr(view, _JSON_ROUTE, True)
    return view


class Refused(AppError):
    """A request the guard refuses, with what the audit event records about it (never the value)."""

    def __init__(self, reason: str, status: int, message: str, hint: str, field: str | None = None) -> None:
        fields = {field: FIELD_MESSAGES.get(reason, message)} if field else {}
        super().__init__("validation_failed", message, hint, fields, status=status)
        self.reason = reason
        self.field = field


def _shown(name: str) -> str:
    """A field name fit to show and record: control characters replaced, clipped."""
    return _ANY_CONTROL.sub("\ufffd", name)[:80] or "(unnamed)"


# How the user sends the thing again, per place the field was in.
_AGAIN: Final[dict[str, str]] = {
    "form": N_("send the form again"),
    "address": N_("open the link again"),
    "request": N_("send the request again"),
}


def _field_refusal(reason: str, field: str, where: str = "form") -> Refused:
    name = _shown(field)
    messages = {
        "control_character": (
            N_("“%(name)s” holds a control character.", name=name),
            N_("Remove control characters (such as NUL)"),
        ),
        "invalid_utf8": (
            N_("“%(name)s” is not UTF-8 text.", name=name),
            N_("Type the value again or paste it as plain text"),
        ),
        "file_part": (N_("“%(name)s” was sent as a file.", name=name), N_("Type the value into the field")),
        "repeated": (N_("“%(name)s” was sent more than once.", name=name), N_("Send each field once")),
        "json_duplicate_key": (N_("The JSON repeats the key “%(name)s”.", name=name), N_("Send each key once")),
    }
    message, hint = messages[reason]
    return Refused(reason, 422, message, N_("%(fix)s, then %(again)s.", fix=hint, again=_AGAIN[where]), name)


# --- the checks ------------------------------------------------------------------------------------------


def _name(raw: bytes, where: str) -> str:
    """A field's name: UTF-8 without any control character."""
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _field_refusal("invalid_utf8", raw.decode("utf-8", "replace"), where) from None
    if _ANY_CONTROL.search(name):
        raise _field_refusal("control_character", name, where)
    return name


def _value(raw: bytes, name: str, where: str) -> None:
    """A field's value: UTF-8 text, where tab, CR and LF are the only control characters."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _field_refusal("invalid_utf8", name, where) from None
    if _TEXT_CONTROL.search(text):
        raise _field_refusal("control_character", name, where)


def _pairs(raw: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(name, value) bytes of an application/x-www-form-urlencoded string (also a query string)."""
    for chunk in raw.split(b"&"):
        if chunk:
            name, _, value = chunk.partition(b"=")
            yield unquote_to_bytes(name.replace(b"+", b" ")), unquote_to_bytes(value.replace(b"+", b" "))


def _check_names(names: list[str], where: str) -> None:
    seen: set[str] = set()
    multi = multi_valued_fields()
    for name in names:
        if name in seen and name not in multi:
            raise _field_refusal("repeated", name, where)
        seen.add(name)


def _check_urlencoded(raw: bytes, where: str) -> None:
    names = []
    for raw_name, raw_value in _pairs(raw):
        name = _name(raw_name, where)
        _value(raw_value, name, where)
        names.append(name)
    _check_names(names, where)


def _check_multipart(raw: bytes) -> None:
    boundary = parse_options_header(request.content_type or "")[1].get("boundary", "")
    unreadable = Refused(
        "malformed",
        400,
        N_("The form could not be read."),
        N_("Send it again from the page; a browser sends it whole."),
    )
    if not boundary:
        raise unreadable
    decoder = MultipartDecoder(boundary.encode("latin-1", "replace"), max_parts=1000)
    decoder.receive_data(raw)
    decoder.receive_data(None)
    names: list[str] = []
    value = bytearray()
    current = ""
    try:
        while not isinstance(event := decoder.next_event(), Epilogue):
            if isinstance(event, NeedData):
                raise unreadable  # the body ended before the closing boundary
            if isinstance(event, File):
                raise _field_refusal("file_part", event.name)
            if isinstance(event, Field):
                # werkzeug reads part headers as Latin-1: back to the bytes the client sent.
                current = _name(event.name.encode("latin-1", "replace"), "form")
                names.append(current)
                value.clear()
            elif isinstance(event, Data):
                value += event.data
                if not event.more_data:
                    _value(bytes(value), current, "form")
    except ValueError:
        raise unreadable from None
    _check_names(names, "form")


def _too_deep() -> Refused:
    return Refused(
        "json_nesting",
        422,
        N_("The JSON nests deeper than %(json_max_depth)s levels.", json_max_depth=JSON_MAX_DEPTH),
        N_("No request here needs more; send the body as documented."),
    )


def _check_json_value(value: Any, path: str, depth: int) -> None:
    if depth > JSON_MAX_DEPTH:
        raise _too_deep()
    if isinstance(value, str):
        if _TEXT_CONTROL.search(value):
            if not path:
                raise Refused(
                    "control_character",
                    422,
                    N_("The JSON body holds a control character."),
                    N_("Remove control characters (such as NUL), then send the request again."),
                )
            raise _field_refusal("control_character", path, "request")
    elif isinstance(value, dict):
        for key, item in value.items():
            if _ANY_CONTROL.search(key):
                raise _field_refusal("control_character", f"{path}.{key}" if path else key, "request")
            _check_json_value(item, f"{path}.{key}" if path else key, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json_value(item, f"{path}[{index}]", depth + 1)


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class _Constant(ValueError):
    """NaN, Infinity or -Infinity: Python's json reads them, JSON (RFC 8259 section 6) has no such numbers."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise _Constant(name)


def _check_json(raw: bytes) -> None:
    if len(raw) > JSON_MAX_BYTES:
        raise Refused(
            "too_large",
            413,
            N_("The JSON body is larger than %(json_max_bytes)s KiB.", json_max_bytes=JSON_MAX_BYTES // 1024),
            N_("Send a smaller body; no request here needs more."),
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused("invalid_utf8", 422, N_("The JSON body is not UTF-8."), N_("Encode the body as UTF-8.")) from None
    try:
        # The C scanner recurses once per level: a body nested near the interpreter's recursion limit raises
        # RecursionError here (cleanly, the scanner checks); shallower ones reach the depth walk below.
        value = json.loads(text, object_pairs_hook=_object, parse_constant=_no_constant)
    except _DuplicateKey as exc:
        raise _field_refusal("json_duplicate_key", exc.key, "request") from None
    except RecursionError:
        raise _too_deep() from None
    except json.JSONDecodeError as exc:
        raise Refused(
            "json_syntax",
            422,
            N_(
                "The request body is not valid JSON: %(msg)s at line %(lineno)s, column %(colno)s.",
                msg=exc.msg,
                lineno=exc.lineno,
                colno=exc.colno,
            ),
            N_('Send Content-Type: application/json and a body like {"name": …}.'),
        ) from None
    except ValueError:
        # NaN/Infinity, or an integer longer than Python converts (sys.get_int_max_str_digits).
        raise Refused(
            "json_number",
            422,
            N_("The JSON holds a number that cannot be used."),
            N_("Use finite numbers of sensible size."),
        ) from None
    _check_json_value(value, "", 0)


def _check_address() -> None:
    raw_path = request.environ.get("PATH_INFO", "").encode("latin-1", "replace")
    problem = None
    try:
        path = raw_path.decode("utf-8")
    except UnicodeDecodeError:
        problem, path = "invalid_utf8", raw_path.decode("utf-8", "replace")
    else:
        problem = "control_character" if _ANY_CONTROL.search(path) else None
    if problem:
        # The argument of the route that holds it, when there is a route to blame.
        args = request.view_args or {}
        blamed = next(
            (k for k, v in args.items() if isinstance(v, str) and ("\ufffd" in v or _ANY_CONTROL.search(v))), None
        )
        message = (
            N_("The address is not UTF-8.")
            if problem == "invalid_utf8"
            else N_("The address holds a control character.")
        )
        raise Refused(
            problem,
            400,
            message,
            N_("Check the link; it may have been cut or altered."),
            blamed,
        )
    _check_urlencoded(request.query_string, "address")
    for name, value in request.headers.items():
        if _HEADER_CONTROL.search(value):
            raise Refused(
                "control_character",
                400,
                N_("The request header %(name)s holds a control character.", name=_shown(name)),
                N_("Send header values without control characters (RFC 9110 section 5.5)."),
            )


def _takes_json() -> bool:
    if request.path.startswith("/api/"):
        return True
    view = current_app.view_functions.get(request.endpoint or "")
    return bool(view is not None and getattr(view, _JSON_ROUTE, False))


def _check_body() -> None:
    if is_streamed(current_app.view_functions.get(request.endpoint or "")):
        return  # the proxy: the body is the upstream's to judge, and streams through unread
    raw = request.get_data(cache=True, parse_form_data=False)
    if not raw:
        return
    mimetype = request.mimetype
    if _takes_json():
        if mimetype != "application/json" and not mimetype.endswith("+json"):
            raise Refused("content_type", 415, N_("The body must be JSON."), N_("Send Content-Type: application/json."))
        _check_json(raw)
    elif mimetype == "application/x-www-form-urlencoded":
        _check_urlencoded(raw, "form")
    elif mimetype == "multipart/form-data":
        _check_multipart(raw)
    else:
        raise Refused(
            "content_type",
            415,
            N_("This address takes a form, not %(type)s.", type=mimetype[:80] or "a body without a content type"),
            N_("Submit the form from its page (application/x-www-form-urlencoded or multipart/form-data)."),
        )


_multi_cache: list[frozenset[str]] = []


def multi_valued_fields() -> frozenset[str]:
    """Field names some form declares multi-valued (a SelectMultipleField, e.g. checkboxes sharing a name):
    only these may repeat. Read from the form classes once, when every view module has been imported."""
    if not _multi_cache:
        names: set[str] = set()
        pending: list[type[Form]] = [Form]
        while pending:
            cls = pending.pop()
            pending.extend(cls.__subclasses__())
            for name, value in vars(cls).items():
                if isinstance(value, UnboundField) and issubclass(value.field_class, SelectMultipleField):
                    names.add(name)
        _multi_cache.append(frozenset(names))
    return _multi_cache[0]


# --- wiring ---------------------------------------------------------------------------------------------


def _audit(refused: Refused) -> None:
    """Record a refused state-changing request where its action would have been recorded (bounded per network)."""
    if request.method in SAFE_METHODS or request.url_rule is None:
        return
    limiter = MovingWindowRateLimiter(get_limit_storage())
    if not limiter.hit(_AUDIT_LIMIT, ip_bucket(client_ip())):
        return
    ctx = audit_ctx()
    ctx = replace(ctx, user_agent=_ANY_CONTROL.sub("\ufffd", ctx.user_agent))
    db = db_session()
    details: dict[str, object] = {"method": request.method, "path": request.url_rule.rule, "reason": refused.reason}
    if refused.field:
        details["field"] = refused.field
    audit.record(
        db,
        ctx,
        "input.refused",
        target=f"{request.method} {request.url_rule.rule}",
        outcome="failure",
        details=details,
    )
    db.commit()


def _guard() -> None:
    try:
        _check_address()
        _check_body()
    except Refused as refused:
        log.info(
            "refused %s %s: %s%s",
            request.method,
            request.url_rule.rule if request.url_rule is not None else "(no route)",
            refused.reason,
            f" in {refused.field}" if refused.field else "",
        )
        _audit(refused)
        raise


def init_input_guard(app: Flask) -> None:
    """Install the id converter (before any route is added) and the request-wide checks."""
    app.url_map.converters["int"] = IdConverter
    app.request_class = Request
    app.before_request(_guard)
