"""A schema-valid catalog mapping (field groups expanded) → a typed :class:`ProviderEntry`, with its
capabilities declared or derived from the auth mode here, once.

The cross-checks a schema cannot express live in :mod:`app.providers.crosschecks`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, assert_never, cast

from app.providers.entries import (
    DEFAULT_BUTTON,
    Capabilities,
    Condition,
    ConditionTerm,
    DeviceClientSpec,
    EnumOption,
    FieldSpec,
    HeaderSpec,
    Notes,
    OAuthSpec,
    ProviderEntry,
    ProxyRule,
    ProxySpec,
    QuerySpec,
    RefreshSpec,
    RevokeSpec,
    VerifySpec,
    norm,
    path_pattern,
)
from app.providers.loading import ROOT, CatalogError
from app.providers.types import (
    FIELD_SETS,
    AuthMode,
    AuthProviderType,
    ConnectKind,
    FieldType,
    RevokeKind,
    VerifyKind,
    Which,
)

DEFAULT_ORDER = 1000


def condition(file: Path, raw: Mapping[str, Any], own: Which | None, path: str) -> Condition:
    terms: list[ConditionTerm] = []
    for key, wanted in raw.items():
        scope_name, dot, name = key.partition(".")
        if dot:
            scope = cast(Which, scope_name)
        elif own is not None:
            scope, name = own, key
        else:
            raise CatalogError(file, f"{path}.{key}", "name the field set: config.<field> or account.<field>")
        values = tuple(wanted) if isinstance(wanted, list) else (wanted,)
        terms.append(ConditionTerm(scope, name, tuple(norm(v) for v in values), values))
    return Condition(tuple(terms))


def _field(file: Path, raw: Mapping[str, Any], which: Which, position: int) -> FieldSpec:
    path = f"$.{which}_fields[{position}]"
    options = tuple(
        EnumOption(str(o["value"]), str(o["label"]), dict(o.get("implies", {}))) for o in raw.get("enum", [])
    )
    visible = raw.get("visible_when")
    return FieldSpec(
        which=which,
        name=raw["name"],
        label=raw["label"],
        type=FieldType(raw["type"]),
        required=bool(raw.get("required", False)),
        secret=bool(raw.get("secret", False)),
        admin_only=bool(raw.get("admin_only", False)),
        advanced=bool(raw.get("advanced", False)),
        pattern=raw.get("pattern"),
        enum=options,
        default=raw.get("default"),
        example=raw.get("example"),
        help=raw.get("help", ""),
        placeholder=raw.get("placeholder", ""),
        order=int(raw.get("order", (position + 1) * 10)),
        visible_when=condition(file, visible, which, f"{path}.visible_when") if visible else None,
        min=raw.get("min"),
        max=raw.get("max"),
        max_length=raw.get("max_length"),
        env_fallback=raw.get("env_fallback"),
        exact=bool(raw.get("exact", False)),
        suggest=raw.get("suggest"),
        raw=raw,
    )


def _verify(raw: Any) -> VerifySpec | None:
    if raw is None:
        return None
    kind = raw.get("kind", "http")
    if kind != "http":
        return VerifySpec(kind=kind)
    return VerifySpec(
        kind="http",
        method=raw["method"],
        base=raw.get("base", "base"),
        path=raw["path"],
        expect_status=tuple(raw["expect_status"]),
        keep=dict(raw.get("keep", {})),
        skip_if_empty=bool(raw.get("skip_if_empty", False)),
        save_unverified=bool(raw.get("save_unverified", False)),
    )


def _revoke(raw: Any, hint: str) -> RevokeSpec | None:
    if raw is None:
        return None
    if raw == "unsupported":
        return RevokeSpec(supported=False, hint=hint)
    return RevokeSpec(
        supported=True,
        hint=hint,
        method=raw["method"],
        url=raw.get("url", ""),
        discovery_key=raw.get("discovery_key"),
        auth=raw["auth"],
        body=dict(raw.get("body", {})),
        body_format=raw.get("body_format", "form"),
        expect_status=tuple(raw.get("expect_status", [200])),
    )


def _refresh(raw: Any) -> RefreshSpec:
    if raw is None or isinstance(raw, str):
        return RefreshSpec(mode=cast(Literal["none", "standard"], raw or "none"))
    return RefreshSpec(
        mode=raw["mode"],
        rotates_refresh_token=bool(raw.get("rotates_refresh_token", False)),
        omits_refresh_token=bool(raw.get("omits_refresh_token", False)),
        default_expires_in=raw.get("default_expires_in"),
        requires_expires_in=bool(raw.get("requires_expires_in", False)),
    )


def _oauth(file: Path, raw: Any) -> OAuthSpec | None:
    if raw is None:
        return None
    refresh_when = raw.get("refresh_when")
    discovery_when = raw.get("discovery_when")
    refresh_params = raw.get("refresh_params")
    return OAuthSpec(
        token_auth=raw["token_auth"],
        claims=dict(raw["claims"]),
        id_token=bool(raw.get("id_token", False)),
        pkce=raw.get("pkce", True),
        issuer=raw.get("issuer"),
        offline_scope=raw.get("offline_scope"),
        authorize_params=dict(raw.get("authorize_params", {})),
        refresh_params=dict(refresh_params) if refresh_params is not None else None,
        refresh_when=condition(file, refresh_when, None, "$.oauth.refresh_when") if refresh_when else None,
        discovery_when=condition(file, discovery_when, None, "$.oauth.discovery_when") if discovery_when else None,
        hosted_domain=raw.get("hosted_domain"),
        device_client=_device_client(raw.get("device_client")),
    )


def _device_client(raw: Any) -> DeviceClientSpec | None:
    if not isinstance(raw, dict):
        return None
    return DeviceClientSpec(str(raw["client_id"]), str(raw["client_secret"]), raw.get("scopes"))


def _connect(mode: AuthMode) -> ConnectKind:
    match mode:
        case AuthMode.OAUTH2 | AuthMode.OIDC:
            return "oauth"
        case AuthMode.API_KEY | AuthMode.SMTP:
            return "secret"
        case AuthMode.PASSWORD:
            return "none"
        case _:
            assert_never(mode)


def capabilities(
    data: Mapping[str, Any],
    mode: AuthMode,
    verify: VerifySpec | None,
    revoke: RevokeSpec | None,
    refresh: RefreshSpec,
    config_fields: tuple[FieldSpec, ...],
) -> Capabilities:
    """What the type can do: the entry's `capabilities` where it says, else what its auth mode implies."""
    declared: Mapping[str, Any] = data.get("capabilities") or {}
    connect = _connect(mode)
    revoke_kind: RevokeKind = "none" if revoke is None else "request" if revoke.supported else "unsupported"
    verify_kind: VerifyKind = verify.kind if verify is not None else "none"
    button: Mapping[str, Any] = data.get("button") or {}
    docs_page = f"docs/providers/{data['id']}.md"
    return Capabilities(
        signin=bool(declared.get("signin", connect == "oauth")),
        connect=connect,
        refresh=refresh.mode,
        revoke=revoke_kind,
        verify=verify_kind,
        xoauth2=bool(declared.get("xoauth2", mode == AuthMode.OIDC)),
        device_flow=connect == "oauth" and any(spec.name == "device_flow" for spec in config_fields),
        button_label=str(button.get("label", DEFAULT_BUTTON)),
        logo=button.get("logo"),
        docs_page=docs_page if (ROOT / docs_page).is_file() else None,
    )


def _notes(raw: Any) -> Notes:
    raw = raw or {}
    return Notes(
        setup=tuple(raw.get("setup", ())),
        connect=raw.get("connect", ""),
        tokens=raw.get("tokens", ""),
        connection_test=tuple(raw.get("connection_test", ())),
    )


def _proxy(raw: Mapping[str, Any] | None) -> ProxySpec | None:
    if raw is None:
        return None
    rules = tuple(
        ProxyRule(
            methods=frozenset(rule["methods"]),
            patterns=tuple(rule["paths"]),
            compiled=tuple(path_pattern(p) for p in rule["paths"]),
        )
        for rule in raw["allow"]
    )
    return ProxySpec(base=raw.get("base", "base"), allow=rules)


def parse_entry(file: Path, data: Mapping[str, Any]) -> ProviderEntry:
    """A schema-valid mapping → a ProviderEntry (cross-checks are separate: see check_entry)."""
    fields: dict[Which, tuple[FieldSpec, ...]] = {}
    for which in FIELD_SETS:
        specs = [_field(file, raw, which, i) for i, raw in enumerate(data[f"{which}_fields"])]
        positions = {id(spec): i for i, spec in enumerate(specs)}
        fields[which] = tuple(sorted(specs, key=lambda s: (s.order, positions[id(s)])))
    headers = tuple(
        HeaderSpec(
            name=h["name"],
            value=h.get("value"),
            basic=(h["basic"]["username"], h["basic"]["password"]) if "basic" in h else None,
            omit_if_empty=bool(h.get("omit_if_empty", False)),
            when=condition(file, h["when"], None, f"$.headers[{i}].when") if "when" in h else None,
        )
        for i, h in enumerate(data.get("headers", []))
    )
    query = tuple(
        QuerySpec(
            name=q["name"],
            value=q["value"],
            omit_if_empty=bool(q.get("omit_if_empty", False)),
            when=condition(file, q["when"], None, f"$.query[{i}].when") if "when" in q else None,
        )
        for i, q in enumerate(data.get("query", []))
    )
    mode = AuthMode(data["auth_mode"])
    verify = _verify(data.get("verify"))
    revoke = _revoke(data.get("revoke"), data.get("revoke_hint", ""))
    refresh = _refresh(data.get("refresh"))
    return ProviderEntry(
        id=AuthProviderType(data["id"]),
        display_name=data["display_name"],
        auth_mode=mode,
        description=data["description"],
        docs_url=data["docs_url"],
        admin_warnings=tuple(data.get("admin_warnings", [])),
        config_fields=fields["config"],
        account_fields=fields["account"],
        endpoints=dict(data.get("endpoints", {})),
        headers=headers,
        query=query,
        verify=verify,
        revoke=revoke,
        refresh=refresh,
        rotation_days=data.get("rotation_days"),
        hooks=tuple(data.get("hooks", [])),
        oauth=_oauth(file, data.get("oauth")),
        capabilities=capabilities(data, mode, verify, revoke, refresh, fields["config"]),
        notes=_notes(data.get("notes")),
        order=int(data.get("order", DEFAULT_ORDER)),
        source=file,
        raw=data,
        proxy=_proxy(data.get("proxy")),
    )
