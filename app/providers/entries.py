"""Typed views of catalog entries: what the registry builds from each YAML file once it has passed the schema.

Everything here is immutable and free of I/O; the registry parses, checks and caches, the rest of the app
(forms, the schema API, connectors, OAuth) reads these objects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from app.i18n import gettext
from app.providers.catalog_messages import catalog_text
from app.providers.types import (
    AuthMode,
    AuthProviderType,
    ConnectKind,
    FieldType,
    RefreshKind,
    RevokeKind,
    VerifyKind,
    Which,
)

Scalar = str | bool | int
# The sign-in button when a catalog entry declares none: shown as "Continue with %(name)s" (Capabilities.button).
DEFAULT_BUTTON = "Continue with {name}"


def norm(value: object) -> str:
    """How a value compares in a condition: booleans as true/false, unset as blank (matches the browser)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class ConditionTerm:
    scope: Which  # the field set the controlling field lives in
    field: str
    values: tuple[str, ...]  # normalised with norm()
    raw: tuple[Scalar, ...]

    @property
    def key(self) -> str:
        return f"{self.scope}.{self.field}"


@dataclass(frozen=True)
class Condition:
    """`{field: value}` or `{field: [values]}`; every term must match."""

    terms: tuple[ConditionTerm, ...]

    def matches(self, values: Mapping[Which, Mapping[str, Any]]) -> bool:
        return all(norm(values.get(t.scope, {}).get(t.field)) in t.values for t in self.terms)


@dataclass(frozen=True)
class EnumOption:
    value: str
    label: str
    implies: Mapping[str, Scalar] = field(default_factory=dict)


@dataclass(frozen=True)
class FieldSpec:
    which: Which
    name: str
    label: str
    type: FieldType
    required: bool = False
    secret: bool = False
    admin_only: bool = False
    advanced: bool = False
    pattern: str | None = None
    enum: tuple[EnumOption, ...] = ()
    default: Any = None
    example: Any = None
    help: str = ""
    placeholder: str = ""
    order: int = 0
    visible_when: Condition | None = None
    min: int | None = None
    max: int | None = None
    max_length: int | None = None
    env_fallback: str | None = None
    exact: bool = False
    suggest: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def enum_values(self) -> tuple[str, ...]:
        return tuple(option.value for option in self.enum)

    def option(self, value: object) -> EnumOption | None:
        for option in self.enum:
            if option.value == value:
                return option
        return None


@dataclass(frozen=True)
class HeaderSpec:
    name: str  # a template (generic API keys take the header name from the config)
    value: str | None = None
    basic: tuple[str, str] | None = None  # (username template, password template), RFC 7617
    omit_if_empty: bool = False
    when: Condition | None = None


@dataclass(frozen=True)
class QuerySpec:
    name: str
    value: str
    omit_if_empty: bool = False
    when: Condition | None = None


@dataclass(frozen=True)
class VerifySpec:
    kind: Literal["http", "smtp", "discovery"]
    method: str = "GET"
    base: str = "base"
    path: str = ""
    expect_status: tuple[int, ...] = (200,)
    keep: Mapping[str, str] = field(default_factory=dict)
    skip_if_empty: bool = False
    # When the vendor cannot be reached, an admin may store the secret unverified (explicitly) and verify later.
    save_unverified: bool = False


@dataclass(frozen=True)
class RevokeSpec:
    supported: bool
    hint: str = ""
    method: str = "POST"
    url: str = ""
    discovery_key: str | None = None
    auth: Literal["basic", "bearer", "none"] = "none"
    body: Mapping[str, str] = field(default_factory=dict)
    body_format: Literal["form", "json"] = "form"
    expect_status: tuple[int, ...] = (200,)


@dataclass(frozen=True)
class RefreshSpec:
    mode: Literal["none", "standard"] = "none"
    rotates_refresh_token: bool = False
    omits_refresh_token: bool = False
    default_expires_in: int | None = None
    requires_expires_in: bool = False


@dataclass(frozen=True)
class DeviceClientSpec:
    """A second OAuth client the device flow uses instead of the main one (Google accepts RFC 8628 only from a
    client of type "TVs and Limited Input devices", with a restricted scope list). ``client_id`` is a template;
    ``client_secret`` and ``scopes`` name config fields (a secret one, and a string list)."""

    client_id: str
    client_secret: str
    scopes: str | None = None


@dataclass(frozen=True)
class OAuthSpec:
    token_auth: str
    claims: Mapping[str, str]
    id_token: bool = False
    pkce: bool | str = True
    issuer: str | None = None
    offline_scope: str | None = None
    authorize_params: Mapping[str, str] = field(default_factory=dict)
    refresh_params: Mapping[str, str] | None = None
    refresh_when: Condition | None = None
    # Read the endpoints from the discovery document only while this holds (generic OIDC: "Endpoints from" is
    # "A discovery URL"); without it an entry with a `discovery` endpoint always discovers.
    discovery_when: Condition | None = None
    # The Google Workspace domain the ID token's `hd` claim must equal (a template; blank: any).
    hosted_domain: str | None = None
    # The device flow's own client, when the provider wants one (Google); None: the main client.
    device_client: DeviceClientSpec | None = None


@dataclass(frozen=True)
class ProxyRule:
    """Methods allowed on the paths matching any of ``patterns`` (``*``: within a segment, ``**``: any segments)."""

    methods: frozenset[str]
    patterns: tuple[str, ...]
    compiled: tuple[re.Pattern[str], ...] = field(repr=False, compare=False)

    def allows(self, method: str, path: str) -> bool:
        return method in self.methods and any(p.fullmatch(path) for p in self.compiled)


@dataclass(frozen=True)
class ProxySpec:
    """What the credential-injecting proxy may forward for this type: the endpoint that is its upstream base
    and the allowed (method, path) pairs. An entry without one cannot be proxied."""

    base: str
    allow: tuple[ProxyRule, ...]

    def allows(self, method: str, path: str) -> bool:
        # HEAD is what GET is without the body (RFC 9110 §9.3.2).
        return any(rule.allows(method, path) or (method == "HEAD" and rule.allows("GET", path)) for rule in self.allow)

    def methods_for(self, path: str) -> list[str]:
        return sorted({m for rule in self.allow for m in rule.methods if any(p.fullmatch(path) for p in rule.compiled)})


def path_pattern(glob: str) -> re.Pattern[str]:
    """A catalog path pattern as a regular expression: ``**`` any characters, ``*`` any but ``/``."""
    parts = re.split(r"(\*\*|\*)", glob)
    body = "".join(".*" if part == "**" else "[^/]*" if part == "*" else re.escape(part) for part in parts)
    return re.compile(body)


@dataclass(frozen=True)
class Notes:
    """What people are told about a type beyond its fields: the steps to register the app at the provider
    (the OAuth setup page), a hint beside "Connect", what a token that never expires means, and what "Test
    connection" adds to its findings. Setup notes may use `code`, *emphasis* and **strong**."""

    setup: tuple[str, ...] = ()
    connect: str = ""
    tokens: str = ""
    connection_test: tuple[str, ...] = ()


@dataclass(frozen=True)
class Capabilities:
    """What a provider type can do: declared in its entry or derived once from its auth mode by the registry,
    and read by every surface instead of a list of ids (sign-in buttons, connections, refresh, revoke,
    verification, SMTP XOAUTH2, the device flow, the setup page)."""

    signin: bool  # "Continue with …" on the sign-in page (oauth2/oidc unless `capabilities.signin: false`)
    connect: ConnectKind
    refresh: RefreshKind
    revoke: RevokeKind
    verify: VerifyKind
    xoauth2: bool  # a connected account's access token may log in to an SMTP server (oidc unless declared)
    device_flow: bool  # a `device_flow` config field lets an admin offer connecting with a code (RFC 8628)
    button_label: str  # the sign-in button, `{name}` being the provider config's name
    logo: str | None  # a file under static/, shown on the sign-in button
    docs_page: str | None  # docs/providers/<id>.md, when there is one

    @property
    def oauth(self) -> bool:
        return self.connect == "oauth"

    def button(self, name: str) -> str:
        """The sign-in button's label in the reader's language, with the provider config's name in it."""
        if self.button_label == DEFAULT_BUTTON:
            return str(gettext("Continue with %(name)s", name=name))
        return catalog_text(self.button_label).replace("{name}", name)


@dataclass(frozen=True)
class ProviderEntry:
    id: AuthProviderType
    display_name: str
    auth_mode: AuthMode
    description: str
    docs_url: str
    admin_warnings: tuple[str, ...]
    config_fields: tuple[FieldSpec, ...]  # sorted by (order, position in the file)
    account_fields: tuple[FieldSpec, ...]
    endpoints: Mapping[str, str]
    headers: tuple[HeaderSpec, ...]
    query: tuple[QuerySpec, ...]
    verify: VerifySpec | None
    revoke: RevokeSpec | None
    refresh: RefreshSpec
    rotation_days: int | None
    hooks: tuple[str, ...]
    oauth: OAuthSpec | None
    capabilities: Capabilities
    notes: Notes
    order: int
    source: Path
    raw: Mapping[str, Any] = field(repr=False)
    proxy: ProxySpec | None = None

    @property
    def type(self) -> AuthProviderType:
        return self.id

    def fields(self, which: Which) -> tuple[FieldSpec, ...]:
        return self.config_fields if which == "config" else self.account_fields

    def field(self, which: Which, name: str) -> FieldSpec | None:
        for spec in self.fields(which):
            if spec.name == name:
                return spec
        return None

    def secret_fields(self, which: Which) -> tuple[FieldSpec, ...]:
        return tuple(spec for spec in self.fields(which) if spec.secret)

    @property
    def has_secrets(self) -> bool:
        return bool(self.secret_fields("config") or self.secret_fields("account"))
