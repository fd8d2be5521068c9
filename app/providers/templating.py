"""`${scope.name}` templates in catalog entries, and the dotted paths of `verify.keep`.

A template names its values explicitly — `${config.tenant}`, `${account.base_url}`, `${secret.api_key}`,
`${token.access_token}` — so the registry can check every reference against the entry's declared fields
when the app starts, and rendering can refuse anything it was not given. There is no escaping, no
expressions and no filters: where data is not enough, a hook is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

Scope = Literal["config", "account", "secret", "token"]
SCOPES: tuple[Scope, ...] = ("config", "account", "secret", "token")

# What an OAuth connector can put in the `token` scope (revoke bodies, bearer headers).
TOKEN_NAMES = frozenset({"access_token", "refresh_token", "revoke_token", "revoke_token_type"})

_REFERENCE = re.compile(r"\$\{(?P<scope>[a-z]+)\.(?P<name>[a-z][a-z0-9_]*)\}")


class TemplateError(ValueError):
    """A malformed template, or a reference to a value the caller did not provide."""


class Revealable(Protocol):
    """A secret wrapper (``app.vault.Secret``): its plaintext comes out only through ``reveal()``."""

    def reveal(self) -> str: ...


@dataclass(frozen=True)
class Reference:
    scope: Scope
    name: str

    def __str__(self) -> str:
        return "${" + f"{self.scope}.{self.name}" + "}"


def references(template: str) -> list[Reference]:
    """Every `${scope.name}` in ``template``; raises TemplateError for a `${` that is not one."""
    found: list[Reference] = []
    position = 0
    while True:
        start = template.find("${", position)
        if start < 0:
            return found
        match = _REFERENCE.match(template, start)
        if match is None:
            end = template.find("}", start)
            snippet = template[start : end + 1] if end >= 0 else template[start:]
            raise TemplateError(f"{snippet!r} is not a reference like ${{config.name}}")
        scope = match["scope"]
        if scope not in SCOPES:
            raise TemplateError(f"{match[0]!r}: unknown scope {scope!r} (expected one of {', '.join(SCOPES)})")
        found.append(Reference(cast(Scope, scope), match["name"]))
        position = match.end()


def is_template(value: str) -> bool:
    return "${" in value


def format_value(value: object) -> str:
    """How a field value reads inside a string: blank for unset, lists space-separated (OAuth scopes)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return " ".join(format_value(item) for item in value)
    reveal = getattr(value, "reveal", None)
    if callable(reveal):
        revealed = reveal()
        if isinstance(revealed, str):
            return revealed
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    raise TemplateError(f"cannot put a {type(value).__name__} into a template")


def render_template_string(
    template: str,
    *,
    config: Mapping[str, Any] | None = None,
    account: Mapping[str, Any] | None = None,
    secret: Mapping[str, Any] | None = None,
    token: Mapping[str, Any] | None = None,
) -> str:
    """Substitute every `${scope.name}`; a name missing from its mapping is an error, never a blank.

    Declared-but-unset values are passed as ``None`` (they render blank); an undeclared name is a bug in
    the entry or the caller, so it raises instead of sending a request with a hole in it.
    """
    scopes: dict[str, Mapping[str, Any] | None] = {
        "config": config,
        "account": account,
        "secret": secret,
        "token": token,
    }
    refs = references(template)
    if not refs:
        return template
    for ref in refs:
        values = scopes[ref.scope]
        if values is None:
            raise TemplateError(f"{ref} needs {ref.scope} values, and none were given")
        if ref.name not in values:
            raise TemplateError(f"unknown reference {ref}")

    def substitute(match: re.Match[str]) -> str:
        values = scopes[match["scope"]]
        assert values is not None
        return format_value(values[match["name"]])

    return _REFERENCE.sub(substitute, template)


def referenced_values_blank(
    template: str,
    *,
    config: Mapping[str, Any] | None = None,
    account: Mapping[str, Any] | None = None,
    secret: Mapping[str, Any] | None = None,
    token: Mapping[str, Any] | None = None,
) -> bool:
    """Whether any value the template references renders blank (for `omit_if_empty`, `skip_if_empty`)."""
    scopes = {"config": config, "account": account, "secret": secret, "token": token}
    for ref in references(template):
        values = scopes[ref.scope] or {}
        if format_value(values.get(ref.name)) == "":
            return True
    return False


def walk_strings(value: object, path: str = "$") -> Iterator[tuple[str, str]]:
    """Every string inside a parsed YAML/JSON value, with its JSON path (dict keys included)."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(key)) else f"{path}[{key!r}]"
            if isinstance(key, str):
                yield f"{child}<key>", key
            yield from walk_strings(item, child)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from walk_strings(item, f"{path}[{index}]")


def pick(data: Any, path: str) -> Any:
    """Read a `verify.keep` path from a JSON document: `auth.accessToken.role`, `orgs[].name`.

    A missing key gives ``None``; `[]` maps the rest of the path over a list (non-dict items dropped).
    """
    head, _, rest = path.partition(".")
    many = head.endswith("[]")
    key = head.removesuffix("[]")
    if not isinstance(data, dict) or key not in data:
        return None
    value = data[key]
    if many:
        if not isinstance(value, list):
            return None
        if not rest:
            return list(value)
        picked = [pick(item, rest) for item in value]
        return [item for item in picked if item is not None]
    return pick(value, rest) if rest else value
