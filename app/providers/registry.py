"""Load the provider catalog: YAML files → JSON Schema check → typed entries → cross-checks.

The JSON Schema (`catalog.schema.json`) checks each file's shape; the cross-checks here check what a
schema cannot: every `${…}` reference names a declared field, `visible_when` names real fields without
cycles, defaults and examples pass their own field's rules, hooks exist in the one explicit map, and the
set of ids equals `AuthProviderType`. Any problem stops start-up with the file, the JSON path and the reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal, cast

import yaml
from flask import Flask
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from app.errors import AppError
from app.providers.entries import (
    Condition,
    ConditionTerm,
    EnumOption,
    FieldSpec,
    HeaderSpec,
    OAuthSpec,
    ProviderEntry,
    QuerySpec,
    RefreshSpec,
    RevokeSpec,
    VerifySpec,
    norm,
)
from app.providers.hooks import HOOKS
from app.providers.templating import (
    TOKEN_NAMES,
    TemplateError,
    references,
    render_template_string,
    walk_strings,
)
from app.providers.types import FIELD_SETS, AuthMode, AuthProviderType, FieldType, Which
from app.providers.validation import FieldError, coerce
from app.settings import SettingsError

__all__ = [
    "CATALOG_DIR",
    "SCHEMA_PATH",
    "Catalog",
    "CatalogError",
    "entry",
    "get_catalog",
    "init_providers",
    "load_catalog",
    "render_template_string",
    "template_scopes",
]

PACKAGE_DIR = Path(__file__).resolve().parent
CATALOG_DIR = PACKAGE_DIR / "catalog"
SCHEMA_PATH = PACKAGE_DIR / "catalog.schema.json"
ROOT = PACKAGE_DIR.parent.parent

# Names a form needs for itself (FlaskForm attributes and the console's own fields).
RESERVED_FIELD_NAMES = frozenset(
    {
        "name",
        "enabled",
        "csrf_token",
        "data",
        "errors",
        "form_errors",
        "meta",
        "validate",
        "validate_on_submit",
        "process",
        "populate_obj",
        "hidden_tag",
        "is_submitted",
        "submit",
    }
)
# Where `${secret.x}` may appear: values sent to the provider in headers, query or a revoke body — never
# a URL or a path, which end up in logs.
SECRET_PATHS = re.compile(
    r"^\$\.(headers\[\d+\]\.(value|basic\.(username|password))|query\[\d+\]\.value|revoke\.body\.\w+)$"
)


class CatalogError(SettingsError):
    """An invalid catalog entry. A SettingsError so the CLI prints it as one line instead of a traceback."""

    def __init__(self, file: Path | str, path: str, reason: str) -> None:
        self.file = str(file)
        self.json_path = path
        self.reason = reason
        super().__init__(_display(file), f"{path}: {reason}")


def _display(file: Path | str) -> str:
    path = Path(file)
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class Catalog:
    """Every provider type, in `AuthProviderType` order."""

    entries: Mapping[AuthProviderType, ProviderEntry]

    def __iter__(self) -> Iterator[ProviderEntry]:
        return iter(self.entries.values())

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, provider_type: AuthProviderType) -> ProviderEntry:
        return self.entries[provider_type]

    def ids(self) -> tuple[AuthProviderType, ...]:
        return tuple(self.entries)


@cache
def load_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return schema


def _read_yaml(file: Path) -> Any:
    try:
        return yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise CatalogError(file, "$", f"not valid YAML{where}: {problem}") from None


def _schema_check(file: Path, data: Any) -> None:
    validator = Draft202012Validator(load_schema())
    error = best_match(validator.iter_errors(data))
    if error is not None:
        raise CatalogError(file, error.json_path, error.message)


# ---------------------------------------------------------------------------------------------- parsing


def _condition(file: Path, raw: Mapping[str, Any], own: Which | None, path: str) -> Condition:
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
        visible_when=_condition(file, visible, which, f"{path}.visible_when") if visible else None,
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
        refresh_when=_condition(file, refresh_when, None, "$.oauth.refresh_when") if refresh_when else None,
    )


def parse_entry(file: Path, data: Mapping[str, Any]) -> ProviderEntry:
    """A schema-valid mapping → a ProviderEntry (cross-checks are separate: see check_entry)."""
    fields: dict[Which, tuple[FieldSpec, ...]] = {}
    for which in FIELD_SETS:
        specs = [_field(file, raw, which, i) for i, raw in enumerate(data[f"{which}_fields"])]
        positions = {id(spec): i for i, spec in enumerate(specs)}
        fields[which] = tuple(sorted(specs, key=lambda s: (s.order, positions[id(s)])))
    try:
        provider_type = AuthProviderType(data["id"])
    except ValueError:
        raise CatalogError(
            file, "$.id", f"{data['id']!r} is not an AuthProviderType; add it to app/providers/types.py"
        ) from None
    headers = tuple(
        HeaderSpec(
            name=h["name"],
            value=h.get("value"),
            basic=(h["basic"]["username"], h["basic"]["password"]) if "basic" in h else None,
            omit_if_empty=bool(h.get("omit_if_empty", False)),
            when=_condition(file, h["when"], None, f"$.headers[{i}].when") if "when" in h else None,
        )
        for i, h in enumerate(data.get("headers", []))
    )
    query = tuple(
        QuerySpec(
            name=q["name"],
            value=q["value"],
            omit_if_empty=bool(q.get("omit_if_empty", False)),
            when=_condition(file, q["when"], None, f"$.query[{i}].when") if "when" in q else None,
        )
        for i, q in enumerate(data.get("query", []))
    )
    return ProviderEntry(
        id=provider_type,
        display_name=data["display_name"],
        auth_mode=AuthMode(data["auth_mode"]),
        description=data["description"],
        docs_url=data["docs_url"],
        admin_warnings=tuple(data.get("admin_warnings", [])),
        config_fields=fields["config"],
        account_fields=fields["account"],
        endpoints=dict(data.get("endpoints", {})),
        headers=headers,
        query=query,
        verify=_verify(data.get("verify")),
        revoke=_revoke(data.get("revoke"), data.get("revoke_hint", "")),
        refresh=_refresh(data.get("refresh")),
        rotation_days=data.get("rotation_days"),
        hooks=tuple(data.get("hooks", [])),
        oauth=_oauth(file, data.get("oauth")),
        source=file,
        raw=data,
    )


# ----------------------------------------------------------------------------------------- cross-checks


def _field_path(entry: ProviderEntry, which: Which, name: str) -> str:
    for i, raw in enumerate(entry.raw[f"{which}_fields"]):
        if raw.get("name") == name:
            return f"$.{which}_fields[{i}]"
    return f"$.{which}_fields"


def _check_fields(entry: ProviderEntry, which: Which) -> None:
    file = entry.source
    seen: set[str] = set()
    for spec in entry.fields(which):
        path = _field_path(entry, which, spec.name)
        if spec.name in seen:
            raise CatalogError(file, f"{path}.name", f"field {spec.name!r} is declared twice")
        seen.add(spec.name)
        if spec.name in RESERVED_FIELD_NAMES:
            raise CatalogError(file, f"{path}.name", f"{spec.name!r} is reserved for the console's own use")
        if spec.pattern is not None:
            try:
                re.compile(spec.pattern)
            except re.error as exc:
                raise CatalogError(file, f"{path}.pattern", f"not a valid regular expression: {exc}") from None
        if spec.type == FieldType.ENUM:
            values = spec.enum_values
            if len(set(values)) != len(values):
                raise CatalogError(file, f"{path}.enum", "enum values must be unique")
        if spec.min is not None and spec.max is not None and spec.min > spec.max:
            raise CatalogError(file, f"{path}.min", f"min {spec.min} is above max {spec.max}")
        for attribute in ("default", "example"):
            value = getattr(spec, attribute)
            if value is None:
                continue
            try:
                coerce(spec, value)
            except FieldError as exc:
                raise CatalogError(
                    file, f"{path}.{attribute}", f"{value!r} fails the field's own rules: {exc}"
                ) from None
    for spec in entry.fields(which):
        path = _field_path(entry, which, spec.name)
        for i, option in enumerate(spec.enum):
            for target, value in option.implies.items():
                target_spec = entry.field(which, target)
                where = f"{path}.enum[{i}].implies.{target}"
                if target_spec is None or target_spec.secret or target == spec.name:
                    raise CatalogError(file, where, f"{target!r} is not another non-secret {which} field")
                try:
                    coerce(target_spec, value)
                except FieldError as exc:
                    raise CatalogError(file, where, f"{value!r} fails {target!r}'s rules: {exc}") from None
        if spec.visible_when is not None:
            _check_condition(entry, spec.visible_when, which, f"{path}.visible_when", own_field=spec.name)
    _check_cycles(entry, which)


def _check_condition(
    entry: ProviderEntry, condition: Condition, which: Which | None, path: str, own_field: str | None = None
) -> None:
    file = entry.source
    for term in condition.terms:
        where = f"{path}.{term.key if which is None or term.scope != which else term.field}"
        if which == "config" and term.scope == "account":
            raise CatalogError(file, where, "a config field cannot depend on an account field")
        controller = entry.field(term.scope, term.field)
        if controller is None:
            raise CatalogError(file, where, f"no {term.scope} field named {term.field!r}")
        if term.scope == which and term.field == own_field:
            raise CatalogError(file, where, "a field cannot depend on itself")
        if controller.secret:
            raise CatalogError(file, where, "a condition cannot read a secret field")
        for value in term.raw:
            if controller.type == FieldType.ENUM and value not in controller.enum_values:
                raise CatalogError(file, where, f"{value!r} is not an option of {term.field!r}")
            if controller.type == FieldType.BOOLEAN and not isinstance(value, bool):
                raise CatalogError(file, where, f"{term.field!r} is a boolean: compare with true or false")


def _check_cycles(entry: ProviderEntry, which: Which) -> None:
    graph = {
        spec.name: [t.field for t in spec.visible_when.terms if t.scope == which] if spec.visible_when else []
        for spec in entry.fields(which)
    }
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            loop = " → ".join([*trail[trail.index(name) :], name])
            raise CatalogError(entry.source, _field_path(entry, which, name) + ".visible_when", f"cycle: {loop}")
        state[name] = 1
        for dependency in graph.get(name, []):
            visit(dependency, [*trail, name])
        state[name] = 2

    for name in graph:
        visit(name, [])


def _check_references(entry: ProviderEntry) -> None:
    file = entry.source
    declared: dict[str, set[str]] = {
        "config": {s.name for s in entry.config_fields if not s.secret},
        "account": {s.name for s in entry.account_fields if not s.secret},
        "secret": {s.name for s in (*entry.config_fields, *entry.account_fields) if s.secret},
        "token": set(TOKEN_NAMES),
    }
    secret_names = [s.name for s in (*entry.config_fields, *entry.account_fields) if s.secret]
    for name in set(secret_names):
        if secret_names.count(name) > 1:
            raise CatalogError(
                file, "$", f"secret field {name!r} is declared in both sets; ${{secret.{name}}} is ambiguous"
            )
    for path, text in walk_strings(dict(entry.raw)):
        try:
            refs = references(text)
        except TemplateError as exc:
            raise CatalogError(file, path, str(exc)) from None
        for ref in refs:
            if ref.name not in declared[ref.scope]:
                if ref.scope in ("config", "account") and ref.name in declared["secret"]:
                    reason = f"{ref} is a secret field: reference it as ${{secret.{ref.name}}}"
                else:
                    reason = f"{ref} refers to an undeclared {ref.scope} field"
                raise CatalogError(file, path, reason)
            if ref.scope == "secret" and not SECRET_PATHS.match(path):
                raise CatalogError(file, path, f"{ref} may only appear in headers, query values or a revoke body")


def _check_mode(entry: ProviderEntry) -> None:
    file = entry.source
    mode = entry.auth_mode
    if mode in (AuthMode.OAUTH2, AuthMode.OIDC):
        client_id = entry.field("config", "client_id")
        client_secret = entry.field("config", "client_secret")
        scopes = entry.field("config", "scopes")
        if client_id is None or client_secret is None or not client_secret.secret:
            raise CatalogError(file, "$.config_fields", "OAuth entries need client_id and a secret client_secret")
        if scopes is None or scopes.type != FieldType.STRING_LIST:
            raise CatalogError(file, "$.config_fields", "OAuth entries need a string_list field named scopes")
        endpoints = entry.endpoints
        if "discovery" not in endpoints and not {"authorization", "token"} <= set(endpoints):
            raise CatalogError(file, "$.endpoints", "OAuth entries need discovery, or authorization and token")
    if mode == AuthMode.API_KEY:
        if not entry.secret_fields("account"):
            raise CatalogError(file, "$.account_fields", "API-key entries keep the key in a secret account field")
        if entry.verify is None or entry.verify.kind != "http":
            raise CatalogError(file, "$.verify", "API-key entries verify with an HTTP request")
    if mode == AuthMode.PASSWORD and entry.has_secrets:
        raise CatalogError(file, "$", "the password mode keeps no secrets in the catalog's fields")
    if entry.verify is not None and entry.verify.kind == "http" and entry.verify.base not in entry.endpoints:
        raise CatalogError(file, "$.verify.base", f"no endpoint named {entry.verify.base!r}")
    revoke = entry.revoke
    if (
        revoke is not None
        and revoke.supported
        and revoke.auth == "basic"
        and (entry.field("config", "client_id") is None or entry.field("config", "client_secret") is None)
    ):
        raise CatalogError(file, "$.revoke.auth", "basic auth uses client_id and client_secret config fields")
    for i, header in enumerate(entry.headers):
        if header.when is not None:
            _check_condition(entry, header.when, None, f"$.headers[{i}].when")
    for i, param in enumerate(entry.query):
        if param.when is not None:
            _check_condition(entry, param.when, None, f"$.query[{i}].when")
    if entry.oauth is not None and entry.oauth.refresh_when is not None:
        _check_condition(entry, entry.oauth.refresh_when, None, "$.oauth.refresh_when")
    for i, name in enumerate(entry.hooks):
        if name not in HOOKS:
            raise CatalogError(file, f"$.hooks[{i}]", f"no hook {name!r} in app/providers/hooks HOOKS")
    rotation = entry.field("config", "rotation_days")
    if rotation is not None and rotation.default != entry.rotation_days:
        raise CatalogError(
            file,
            _field_path(entry, "config", "rotation_days") + ".default",
            f"must equal the entry's rotation_days ({entry.rotation_days})",
        )


def check_entry(entry: ProviderEntry) -> None:
    if entry.source.stem != entry.id.value:
        raise CatalogError(entry.source, "$.id", f"the file must be named {entry.id.value}.yaml")
    for which in FIELD_SETS:
        _check_fields(entry, which)
    _check_references(entry)
    _check_mode(entry)


def load_entry(file: Path) -> ProviderEntry:
    data = _read_yaml(file)
    _schema_check(file, data)
    entry = parse_entry(file, data)
    check_entry(entry)
    return entry


def load_catalog(directory: Path | None = None) -> Catalog:
    """Read and check every `*.yaml` in ``directory``; raises CatalogError at the first problem."""
    directory = directory or CATALOG_DIR
    found: dict[AuthProviderType, ProviderEntry] = {}
    for file in sorted(directory.glob("*.yaml")):
        loaded = load_entry(file)
        if loaded.id in found:
            raise CatalogError(file, "$.id", f"{loaded.id.value!r} is also declared in {found[loaded.id].source.name}")
        found[loaded.id] = loaded
    missing = [t.value for t in AuthProviderType if t not in found]
    if missing:
        raise CatalogError(directory, "$", "no catalog entry for provider type(s): " + ", ".join(missing))
    return Catalog({t: found[t] for t in AuthProviderType})


_LOADED: dict[Path, Catalog] = {}


def get_catalog() -> Catalog:
    """The catalog, loaded and checked once per process (per catalog directory)."""
    directory = CATALOG_DIR
    if directory not in _LOADED:
        _LOADED[directory] = load_catalog(directory)
    return _LOADED[directory]


def entry(provider_type: AuthProviderType | str) -> ProviderEntry:
    """The entry for a type; an unknown type string is a ``not_found`` (it usually came from a URL)."""
    try:
        key = AuthProviderType(provider_type)
    except ValueError:
        raise AppError("not_found", f"There is no provider type {str(provider_type)[:40]!r}.") from None
    return get_catalog()[key]


def init_providers(app: Flask) -> Catalog:
    """Load and check the catalog at start-up: a bad entry stops create_app with a CatalogError."""
    catalog = get_catalog()
    app.extensions["ami_catalog"] = catalog
    return catalog


def template_scopes(
    provider: ProviderEntry,
    *,
    config: Mapping[str, Any] | None = None,
    account: Mapping[str, Any] | None = None,
    secrets: Mapping[str, Any] | None = None,
    token: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Keyword arguments for render_template_string with every declared name present (unset → blank)."""
    from app.providers.validation import effective_values

    return {
        "config": effective_values(provider, "config", config or {}),
        "account": effective_values(provider, "account", account or {}),
        "secret": {
            s.name: (secrets or {}).get(s.name) for s in (*provider.config_fields, *provider.account_fields) if s.secret
        },
        "token": {name: (token or {}).get(name) for name in TOKEN_NAMES},
    }
