"""Turn submitted values into clean ones with the catalog's field rules — one implementation for the
admin forms, the JSON API and the CLI (`providers apply`), so the three can never disagree.

Input values may be strings (an HTML form, an environment variable) or typed JSON/YAML values. Output:
a ``clean`` dict of typed values (``None`` for a blank optional field; a ``Secret`` for a secret field)
and an ``errors`` dict of one human message per field. Fields hidden by ``visible_when`` are neither
validated nor returned; a blank secret field whose value is already stored is left out ("keep it").
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from email_validator import EmailNotValidError, validate_email

from app.i18n import N_, gettext
from app.i18n import gettext as _
from app.providers.entries import FieldSpec, ProviderEntry, norm
from app.providers.hooks import HOOKS
from app.providers.types import FieldType, Which
from app.vault import Secret

DEFAULT_MAX_LENGTH = {FieldType.TEXT: 20000, FieldType.JSON: 20000}
STRING_MAX_LENGTH = 2000
LIST_MAX_ITEMS = 100
REQUIRED = N_("This field is required.")
# A required boolean is an acknowledgement (SMTP without TLS): it must be on, in a form, a file or JSON.
MUST_BE_ON = N_("This must be turned on (ticked) to continue.")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LIST_SPLIT = re.compile(r"[\s,]+")
_INTEGER = re.compile(r"[+-]?\d{1,18}")
_TRUE = frozenset({"y", "yes", "on", "true", "1"})
_FALSE = frozenset({"n", "no", "off", "false", "0", ""})

ValuesByScope = Mapping[Which, Mapping[str, Any]]


class FieldError(ValueError):
    """One field's value is not acceptable; the message is shown next to the field."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _text(spec: FieldSpec, raw: object) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise FieldError(_("Enter text here."))
    text = str(raw).strip()
    if text == "":
        return None
    limit = spec.max_length or DEFAULT_MAX_LENGTH.get(spec.type, STRING_MAX_LENGTH)
    if len(text) > limit:
        raise FieldError(_("Use at most %(limit)s characters.", limit=limit))
    allowed_newlines = spec.type in (FieldType.TEXT, FieldType.JSON)
    if _CONTROL.search(text) or (not allowed_newlines and ("\n" in text or "\r" in text)):
        raise FieldError(_("Remove line breaks and control characters."))
    return text


def _pattern_message(spec: FieldSpec) -> str:
    if spec.example is not None and not spec.secret:
        return str(_("This does not look right; expected something like %(example)s.", example=spec.example))
    return str(_("This does not have the expected format."))


def _check_pattern(spec: FieldSpec, value: str) -> None:
    if spec.pattern is not None and re.fullmatch(spec.pattern, value) is None:
        raise FieldError(_pattern_message(spec))


# The authority of a URL the catalog takes: an ASCII host name or IPv4 address (an international name in its
# xn-- form; no IPv6 literal, no user name), then an optional port from 0 to 65535. The JSON API's schema
# (app.api.schema.URL_PATTERN) is built from the same expression, so the two agree on every value.
URL_AUTHORITY: Final = (
    r"[A-Za-z0-9._~%!$&'()*+,;=-]+"
    r"(?::(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"
)
_AUTHORITY: Final = re.compile(URL_AUTHORITY)


def _url(value: str, *, exact: bool = False) -> str:
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:  # "Invalid IPv6 URL" (an unbalanced "["), a name that NFKC turns into "/", "?", "#"…
        raise FieldError(_("Enter an absolute http(s) URL, like https://api.example.com.")) from None
    if parts.scheme not in ("http", "https") or not host or " " in value:
        raise FieldError(_("Enter an absolute http(s) URL, like https://api.example.com."))
    if "@" not in parts.netloc and _AUTHORITY.fullmatch(parts.netloc) is None:
        raise FieldError(
            _("Use a host name or IPv4 address (an international name in its xn-- form) and a port up to 65535.")
        )
    if parts.username or parts.password:
        # Credentials in a URL end up in logs and Referer headers; they belong in secret fields.
        raise FieldError(_("Leave user names and passwords out of the URL; use the secret fields."))
    if exact:
        return value
    # Templates append paths ("${account.base_url}/v1/models"): a trailing slash would double it.
    return value.rstrip("/")


def _integer(spec: FieldSpec, raw: object) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool):
        raise FieldError(_("Enter a whole number."))
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str):
        text = raw.strip()
        if text == "":
            return None
        if _INTEGER.fullmatch(text) is None:
            raise FieldError(_("Enter a whole number."))
        value = int(text)
    else:
        raise FieldError(_("Enter a whole number."))
    low, high = spec.min, spec.max
    if (low is not None and value < low) or (high is not None and value > high):
        if low is not None and high is not None:
            raise FieldError(_("Use a number from %(low)s to %(high)s.", low=low, high=high))
        if low is not None:
            raise FieldError(_("Use a number of at least %(low)s.", low=low))
        raise FieldError(_("Use a number of at most %(high)s.", high=high))
    return value


def _boolean(raw: object) -> bool | None:
    if raw is None or isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise FieldError(_("Choose yes or no."))


def _string_list(spec: FieldSpec, raw: object) -> list[str] | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        items = [item for item in _LIST_SPLIT.split(raw) if item]
    elif isinstance(raw, list | tuple):
        if not all(isinstance(item, str) for item in raw):
            raise FieldError(_("Give a list of words."))
        items = [item.strip() for item in raw if item.strip()]
    else:
        raise FieldError(_("Give a list of words."))
    unique = list(dict.fromkeys(items))
    if not unique:
        return None
    if len(unique) > LIST_MAX_ITEMS:
        raise FieldError(_("Use at most %(count)s entries.", count=LIST_MAX_ITEMS))
    for item in unique:
        if len(item) > STRING_MAX_LENGTH or _CONTROL.search(item):
            raise FieldError(_("Remove control characters and very long entries."))
        if spec.pattern is not None and re.fullmatch(spec.pattern, item) is None:
            if spec.secret:
                raise FieldError(_("The entry does not have the expected format."))
            raise FieldError(_("The entry %(entry)s does not have the expected format.", entry=repr(item[:80])))
    return unique


def _json(spec: FieldSpec, raw: object) -> Any:
    if raw is None:
        return None
    if isinstance(raw, str):
        text = _text(spec, raw)
        if text is None:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise FieldError(
                _(
                    "Enter valid JSON (%(problem)s at line %(line)s, column %(column)s).",
                    problem=exc.msg,
                    line=exc.lineno,
                    column=exc.colno,
                )
            ) from None
    try:
        json.dumps(raw)
    except (TypeError, ValueError):
        raise FieldError(_("Enter valid JSON.")) from None
    return raw


def coerce(spec: FieldSpec, raw: object) -> Any:
    """One field's raw value → its typed value (``None`` when blank); raises FieldError."""
    kind = spec.type
    if kind == FieldType.INTEGER:
        return _integer(spec, raw)
    if kind == FieldType.BOOLEAN:
        return _boolean(raw)
    if kind == FieldType.STRING_LIST:
        return _string_list(spec, raw)
    if kind == FieldType.JSON:
        return _json(spec, raw)
    text = _text(spec, raw)
    if text is None:
        return None
    if kind == FieldType.URL:
        text = _url(text, exact=spec.exact)
    elif kind == FieldType.EMAIL:
        try:
            text = validate_email(text, check_deliverability=False).normalized
        except EmailNotValidError:
            raise FieldError(_("Enter an email address like name@example.com.")) from None
    elif kind == FieldType.ENUM and text not in spec.enum_values:
        raise FieldError(_("Choose one of: %(options)s.", options=", ".join(gettext(o.label) for o in spec.enum)))
    _check_pattern(spec, text)
    return text


def visibility(
    entry: ProviderEntry,
    which: Which,
    values: Mapping[str, Any],
    context: ValuesByScope | None = None,
) -> dict[str, bool]:
    """Which fields of a set are shown, given the set's current values (and, for accounts, the config's).

    A field controlled by a hidden field is hidden unless its condition matches blank: hiding cascades.
    """
    specs = {spec.name: spec for spec in entry.fields(which)}
    result: dict[str, bool] = {}

    def visible(name: str) -> bool:
        if name in result:
            return result[name]
        spec = specs[name]
        shown = True
        if spec.visible_when is not None:
            for term in spec.visible_when.terms:
                if term.scope == which:
                    value = values.get(term.field) if visible(term.field) else None
                else:
                    value = (context or {}).get(term.scope, {}).get(term.field)
                if norm(value) not in term.values:
                    shown = False
                    break
        result[name] = shown
        return shown

    for name in specs:
        visible(name)
    return result


def effective_values(entry: ProviderEntry, which: Which, stored: Mapping[str, Any]) -> dict[str, Any]:
    """Stored non-secret values with the catalog's defaults for fields never set, and implied values
    (an enum option's ``implies``) for fields left blank — what templates and connectors should use."""
    values: dict[str, Any] = {}
    for spec in entry.fields(which):
        if spec.secret:
            continue
        values[spec.name] = stored[spec.name] if spec.name in stored else _copy(spec.default)
    for spec in entry.fields(which):
        if spec.type != FieldType.ENUM or spec.secret:
            continue
        option = spec.option(values.get(spec.name))
        if option is None:
            continue
        for target, implied in option.implies.items():
            if values.get(target) is None:
                values[target] = implied
    return values


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def validate_submission(
    entry: ProviderEntry,
    which: Which,
    data: Mapping[str, Any],
    *,
    secrets_set: Collection[str] = (),
    context: ValuesByScope | None = None,
    as_admin: bool = True,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Check a full submission of one field set against the entry; returns ``(clean, errors)``.

    - A field missing from ``data`` takes its catalog default (a form always sends every shown field).
    - ``secrets_set`` names the secret fields already stored: blank there means "keep", not "missing".
    - ``context`` gives the other set's values for cross-set conditions (an account form needs the config).
    - Without ``as_admin``, ``admin_only`` fields are neither accepted nor returned (the caller keeps them).
    """
    errors: dict[str, str] = {}
    specs = entry.fields(which)
    known = {spec.name for spec in specs}
    for name in data:
        if name not in known:
            errors[name] = _("This is not a field of this provider type.")
    values: dict[str, Any] = {}
    skipped: set[str] = set()
    for spec in specs:
        if spec.admin_only and not as_admin:
            skipped.add(spec.name)
            if spec.name in data:
                errors[spec.name] = _("Only an administrator can set this.")
            continue
        if spec.name not in data:
            values[spec.name] = None if spec.secret else _copy(spec.default)
            continue
        try:
            values[spec.name] = coerce(spec, data[spec.name])
        except FieldError as exc:
            errors[spec.name] = exc.message
            values[spec.name] = None
    shown = visibility(entry, which, values, context)
    clean: dict[str, Any] = {}
    for spec in specs:
        if spec.name in skipped:
            continue
        if not shown[spec.name]:
            errors.pop(spec.name, None)  # server-side validation ignores what the form hides
            continue
        if spec.name in errors:
            continue
        value = values[spec.name]
        if spec.secret:
            if value is not None:
                clean[spec.name] = Secret(value if isinstance(value, str) else json.dumps(value))
            elif spec.required and spec.name not in secrets_set:
                errors[spec.name] = gettext(REQUIRED)
            continue
        if spec.required and (value is None or (spec.type == FieldType.BOOLEAN and value is False)):
            errors[spec.name] = gettext(MUST_BE_ON if spec.type == FieldType.BOOLEAN else REQUIRED)
            continue
        clean[spec.name] = value
    for name in entry.hooks:
        hook = HOOKS[name]
        if hook.validate is not None and not errors:
            errors.update(hook.validate(entry, which, clean))
    return clean, errors


def split_secrets(
    entry: ProviderEntry, which: Which, clean: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Secret]]:
    """``clean`` → (non-secret values to store as JSON, secret values for the vault)."""
    secret_names = {spec.name for spec in entry.secret_fields(which)}
    plain = {k: v for k, v in clean.items() if k not in secret_names}
    secrets = {k: v for k, v in clean.items() if k in secret_names and isinstance(v, Secret)}
    return plain, secrets


def missing_fields(
    entry: ProviderEntry,
    which: Which,
    stored: Mapping[str, Any],
    secrets_set: Collection[str],
    context: ValuesByScope | None = None,
) -> dict[str, str]:
    """What keeps stored values from being usable (checked before a config is enabled, and by check-config)."""
    data = {spec.name: stored[spec.name] for spec in entry.fields(which) if not spec.secret and spec.name in stored}
    _, errors = validate_submission(entry, which, data, secrets_set=secrets_set, context=context)
    return errors


def labels(entry: ProviderEntry, which: Which, names: Iterable[str]) -> list[str]:
    result = []
    for name in names:
        spec = entry.field(which, name)
        result.append(spec.label if spec is not None else name)
    return result
