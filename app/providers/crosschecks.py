"""The catalog's cross-checks: what a JSON Schema cannot say.

Every `${…}` reference names a declared field (secrets only where they are sent, never in a URL);
`visible_when` names real fields without cycles; defaults and examples pass their own field's rules; hooks
exist in the one explicit map; each auth mode has the fields and endpoints its code needs; a logo exists.
Any problem raises :class:`~app.providers.loading.CatalogError` with the file, the JSON path and the reason.
"""

from __future__ import annotations

import re

from app.providers.entries import Condition, ProviderEntry
from app.providers.hooks import HOOKS
from app.providers.loading import ROOT, CatalogError
from app.providers.templating import TOKEN_NAMES, TemplateError, references, walk_strings
from app.providers.types import FIELD_SETS, AuthMode, FieldType, Which
from app.providers.validation import FieldError, coerce

STATIC_DIR = ROOT / "static"
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


def _check_capabilities(entry: ProviderEntry) -> None:
    file = entry.source
    oauth = entry.oauth
    if oauth is not None and oauth.discovery_when is not None:
        _check_condition(entry, oauth.discovery_when, None, "$.oauth.discovery_when")
    if oauth is not None and oauth.discovery_when is not None and "discovery" not in entry.endpoints:
        raise CatalogError(file, "$.oauth.discovery_when", "there is no discovery endpoint to read")
    if entry.auth_mode == AuthMode.SMTP and (
        entry.field("config", "host") is None or entry.field("account", "from_address") is None
    ):
        # The SMTP login (app/connectors/smtp_login.py) reads the server and the sender by these names.
        raise CatalogError(
            file, "$.config_fields", "SMTP entries need a config field host and an account field from_address"
        )
    proxy = entry.proxy
    if proxy is not None and entry.auth_mode not in (AuthMode.API_KEY, AuthMode.OAUTH2, AuthMode.OIDC):
        raise CatalogError(file, "$.proxy", "only API-key and OAuth entries have a credential to proxy with")
    if proxy is not None and proxy.base not in entry.endpoints:
        raise CatalogError(file, "$.proxy.base", f"no endpoint named {proxy.base!r}")
    if proxy is not None and any(".." in p or "//" in p for rule in proxy.allow for p in rule.patterns):
        raise CatalogError(file, "$.proxy.allow", "a path pattern cannot hold '..' or '//'")
    logo = entry.capabilities.logo
    if logo is not None and not (STATIC_DIR / logo).is_file():
        raise CatalogError(file, "$.button.logo", f"no file static/{logo}")


def check_entry(entry: ProviderEntry) -> None:
    if entry.source.stem != entry.id:
        raise CatalogError(entry.source, "$.id", f"the file must be named {entry.id}.yaml")
    for which in FIELD_SETS:
        _check_fields(entry, which)
    _check_references(entry)
    _check_mode(entry)
    _check_capabilities(entry)
