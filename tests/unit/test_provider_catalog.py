"""The provider catalog: loading and its cross-checks, templates, visible_when and field validation."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.api.schema import URL_PATTERN
from app.connectors import verify
from app.providers import registry
from app.providers.entries import ProviderEntry
from app.providers.registry import CatalogError, get_catalog, load_catalog, load_entry, template_scopes
from app.providers.templating import (
    TOKEN_NAMES,
    TemplateError,
    pick,
    referenced_values_blank,
    references,
    render_template_string,
    walk_strings,
)
from app.providers.types import AuthMode, AuthProviderType
from app.providers.validation import effective_values, missing_fields, validate_submission, visibility
from app.vault import Secret
from tests.conftest import make_settings


def _entry(provider_type: str) -> ProviderEntry:
    return get_catalog()[AuthProviderType(provider_type)]


# ------------------------------------------------------------------------------------------ the catalog


def test_catalog_ids_are_the_file_names_one_file_each() -> None:
    catalog = get_catalog()
    # Listed by each entry's `order` (the console's "Add a provider"), which keeps the order types always had.
    assert catalog.ids() == tuple(sorted(catalog.ids(), key=lambda t: (catalog[t].order, t)))
    assert catalog.ids()[:2] == ("ami_credentials", "google") and catalog.ids()[-1] == "smtp"
    files = sorted(p.stem for p in registry.CATALOG_DIR.glob("*.yaml"))
    assert files == sorted(catalog.ids())
    for provider in catalog:
        assert provider.source.name == f"{provider.id}.yaml"


def test_every_reference_in_every_entry_names_a_declared_field() -> None:
    """Walks every string of every entry (keys too) independently of the registry's own check."""
    checked = 0
    for provider in get_catalog():
        declared = {
            "config": {f.name for f in provider.config_fields if not f.secret},
            "account": {f.name for f in provider.account_fields if not f.secret},
            "secret": {f.name for f in (*provider.config_fields, *provider.account_fields) if f.secret},
            "token": set(TOKEN_NAMES),
        }
        for path, text in walk_strings(dict(provider.raw)):
            for ref in references(text):
                assert ref.name in declared[ref.scope], f"{provider.source.name} {path}: {ref} is not declared"
                checked += 1
    assert checked > 50


def test_entries_have_what_their_auth_mode_needs() -> None:
    for provider in get_catalog():
        if provider.auth_mode in (AuthMode.OAUTH2, AuthMode.OIDC):
            assert provider.oauth is not None and provider.revoke is not None
            assert provider.field("config", "client_secret") is not None
        if provider.auth_mode == AuthMode.API_KEY:
            assert provider.headers and provider.verify is not None and provider.verify.kind == "http"
            assert provider.revoke is not None and not provider.revoke.supported and provider.revoke.hint
        if provider.auth_mode in (AuthMode.OAUTH2, AuthMode.OIDC, AuthMode.API_KEY):
            # Every built-in type with a credential can be used through the proxy, to its own base URL only.
            assert provider.proxy is not None and provider.proxy.base in provider.endpoints, provider.id
    assert _entry("azure_ad").revoke is not None and not _entry("azure_ad").revoke.supported  # type: ignore[union-attr]
    github = _entry("github")
    assert github.revoke is not None and github.revoke.method == "DELETE" and github.revoke.auth == "basic"
    assert github.refresh.requires_expires_in


@pytest.fixture
def catalog_copy(tmp_path: Path) -> Path:
    target = tmp_path / "catalog"
    shutil.copytree(registry.CATALOG_DIR, target)
    return target


def _edit(directory: Path, name: str, change: Any) -> Path:
    path = directory / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _fails(directory: Path) -> CatalogError:
    with pytest.raises(CatalogError) as info:
        load_catalog(directory)
    return info.value


def test_undeclared_reference_names_file_path_and_reason(catalog_copy: Path) -> None:
    _edit(catalog_copy, "openai", lambda d: d["endpoints"].update(models="${account.base_ur}/v1/models"))
    error = _fails(catalog_copy)
    assert error.file.endswith("openai.yaml")
    assert error.json_path == "$.endpoints.models"
    assert "${account.base_ur} refers to an undeclared account field" in error.reason
    assert str(error).startswith(str(catalog_copy / "openai.yaml")) or "openai.yaml: $.endpoints.models" in str(error)


def test_schema_violation_gives_the_json_path(catalog_copy: Path) -> None:
    _edit(catalog_copy, "smtp", lambda d: d["config_fields"][0].update(type="strin"))
    error = _fails(catalog_copy)
    assert error.file.endswith("smtp.yaml") and error.json_path == "$.config_fields[0].type"
    assert "'strin' is not one of" in error.reason


@pytest.mark.parametrize(
    ("name", "change", "path", "reason"),
    [
        (
            "google",
            lambda d: d["endpoints"].update(discovery="${config.client_secret}/x"),
            "$.endpoints.discovery",
            "is a secret field",
        ),
        (
            "openai",
            lambda d: d["endpoints"].update(models="${account.base_url}/v1?key=${secret.api_key}"),
            "$.endpoints.models",
            "may only appear in headers",
        ),
        (
            "generic_api_key",
            lambda d: d["config_fields"][2].update(visible_when={"auth_typ": "header"}),
            "$.config_fields[2].visible_when.auth_typ",
            "no config field named 'auth_typ'",
        ),
        (
            "generic_api_key",
            lambda d: d["config_fields"][2].update(visible_when={"auth_type": "headers"}),
            "$.config_fields[2].visible_when.auth_type",
            "'headers' is not an option",
        ),
        (
            "generic_api_key",
            lambda d: d["config_fields"][1].update(visible_when={"header_name": "x"}),
            "$.config_fields",
            "cycle",
        ),
        ("smtp", lambda d: d["config_fields"][0].update(default="not a host!"), "$.config_fields[0].default", "fails"),
        ("openai", lambda d: d.update(hooks=["nope"]), "$.hooks[0]", "no hook 'nope'"),
        (
            "openai",
            lambda d: d["headers"].append({"name": "X", "value": "${oops}"}),
            "$.headers[3].value",
            "is not a reference",
        ),
        (
            # The rotation_reminder group takes the entry's rotation_days as its default; an override may not differ.
            "openai",
            lambda d: d["config_fields"][0].update(override={"rotation_days": {"default": 30}}),
            "$.config_fields[0].default",
            "must equal",
        ),
        ("smtp", lambda d: d["config_fields"][1]["enum"][0].update(implies={"prot": 1}), "implies.prot", "not another"),
        ("openai", lambda d: d["account_fields"][1].update(name="name"), ".name", "reserved"),
        ("openai", lambda d: d["proxy"].update(base="nowhere"), "$.proxy.base", "no endpoint named 'nowhere'"),
        ("openai", lambda d: d["proxy"]["allow"][0].update(paths=["/v1/../**"]), "$.proxy.allow", "'..'"),
        ("smtp", lambda d: d.update(proxy={"allow": [{"methods": ["GET"], "paths": ["/**"]}]}), "$.proxy", "only"),
    ],
)
def test_cross_checks(catalog_copy: Path, name: str, change: Any, path: str, reason: str) -> None:
    _edit(catalog_copy, name, change)
    error = _fails(catalog_copy)
    assert error.file.endswith(f"{name}.yaml")
    assert path in error.json_path, error
    assert reason in error.reason, error


def test_ids_are_the_file_names(catalog_copy: Path) -> None:
    # An id is a file: a catalog without smtp.yaml simply has no SMTP type (nothing in the code lists ids).
    (catalog_copy / "smtp.yaml").unlink()
    assert "smtp" not in load_catalog(catalog_copy).ids()
    extra = catalog_copy / "smtp.yaml"
    extra.write_text((registry.CATALOG_DIR / "smtp.yaml").read_text().replace("id: smtp", "id: fax"))
    error = _fails(catalog_copy)
    assert error.json_path == "$.id" and "the file must be named fax.yaml" in error.reason


def test_yaml_syntax_error_gives_the_line(catalog_copy: Path) -> None:
    (catalog_copy / "github.yaml").write_text("id: github\nconfig_fields: [\n")
    error = _fails(catalog_copy)
    assert error.file.endswith("github.yaml") and "not valid YAML (line" in error.reason


def test_create_app_stops_on_an_invalid_entry(
    catalog_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app import create_app

    _edit(catalog_copy, "anthropic", lambda d: d["headers"][0].update(value="${secret.api_keys}"))
    monkeypatch.setattr(registry, "CATALOG_DIR", catalog_copy)
    with pytest.raises(CatalogError) as info:
        create_app(make_settings(tmp_path, f"sqlite:///{tmp_path}/x.db"))
    assert "anthropic.yaml: $.headers[0].value: ${secret.api_keys} refers to an undeclared secret field" in str(
        info.value
    )


# -------------------------------------------------------------------------------------------- templates


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/models", True),
        ("POST", "/v1/chat/completions", True),
        ("HEAD", "/v1/models", True),  # HEAD wherever GET is allowed (RFC 9110 §9.3.2)
        ("PUT", "/v1/models", False),
        ("GET", "/v2/models", False),
        ("GET", "/v1", False),
    ],
)
def test_proxy_rules_match_methods_and_glob_paths(method: str, path: str, allowed: bool) -> None:
    spec = _entry("openai").proxy
    assert spec is not None
    assert spec.allows(method, path) is allowed
    hf = _entry("huggingface").proxy
    assert hf is not None and hf.allows("GET", "/api/models/org/name") and not hf.allows("GET", "/api/whoami-v2/x")
    assert hf.methods_for("/api/whoami-v2") == ["GET"]


def test_render_substitutes_and_refuses_unknown_references() -> None:
    template = "https://login.microsoftonline.com/${config.tenant}/oauth2/v2.0/authorize"
    assert (
        render_template_string(template, config={"tenant": "organizations"})
        == "https://login.microsoftonline.com/organizations/oauth2/v2.0/authorize"
    )
    with pytest.raises(TemplateError, match=r"unknown reference \$\{config\.tennant\}"):
        render_template_string("${config.tennant}", config={"tenant": "x"})
    with pytest.raises(TemplateError, match="needs secret values"):
        render_template_string("Bearer ${secret.api_key}", config={})
    with pytest.raises(TemplateError, match="is not a reference"):
        render_template_string("${tenant}", config={"tenant": "x"})
    with pytest.raises(TemplateError, match="unknown scope"):
        render_template_string("${env.home}", config={})
    assert render_template_string("cost: $5 {x}", config={}) == "cost: $5 {x}"


def test_render_formats_values() -> None:
    values = {"none": None, "on": True, "scopes": ["openid", "email"], "port": 587}
    assert render_template_string("[${config.none}]", config=values) == "[]"
    assert render_template_string("${config.on}", config=values) == "true"
    assert render_template_string("${config.scopes}", config=values) == "openid email"
    assert render_template_string("${config.port}", config=values) == "587"
    assert render_template_string("Bearer ${secret.k}", secret={"k": Secret("sk-123")}) == "Bearer sk-123"


def test_catalog_headers_render_from_template_scopes() -> None:
    openai = _entry("openai")
    scopes = template_scopes(openai, account={"project_id": "proj_abc"}, secrets={"api_key": Secret("sk-x")})
    rendered = {}
    for header in openai.headers:
        assert header.value is not None
        if header.omit_if_empty and referenced_values_blank(header.value, **scopes):
            continue
        rendered[header.name] = render_template_string(header.value, **scopes)
    assert rendered == {"Authorization": "Bearer sk-x", "OpenAI-Project": "proj_abc"}
    assert render_template_string(openai.endpoints["models"], **scopes) == "https://api.openai.com/v1/models"
    azure = _entry("azure_ad")
    url = render_template_string(
        azure.endpoints["authorization"], **template_scopes(azure, config={"tenant": "common"})
    )
    assert url == "https://login.microsoftonline.com/common/oauth2/v2.0/authorize"


def test_pick_reads_keep_paths() -> None:
    whoami = {
        "name": "ada",
        "orgs": [{"name": "acme"}, {"name": "labs"}, "junk"],
        "auth": {"type": "access_token", "accessToken": {"displayName": "ci", "role": "write"}},
    }
    assert pick(whoami, "auth.accessToken.role") == "write"
    assert pick(whoami, "orgs[].name") == ["acme", "labs"]
    assert pick(whoami, "missing.path") is None
    assert pick(whoami, "name.deeper") is None
    keep = _entry("huggingface").verify.keep  # type: ignore[union-attr]
    assert {name: pick(whoami, path) for path, name in keep.items()}["token_role"] == "write"


# ----------------------------------------------------------------------------------- visible_when, values


def test_hidden_fields_are_not_validated_or_returned() -> None:
    provider = _entry("generic_api_key")
    data = {"base_url": "https://api.example.com", "auth_type": "bearer", "header_name": "bad header!"}
    clean, errors = validate_submission(provider, "config", data)
    assert errors == {} and "header_name" not in clean
    clean, errors = validate_submission(provider, "config", {**data, "auth_type": "header"})
    assert set(errors) == {"header_name"}
    clean, errors = validate_submission(provider, "config", {**data, "auth_type": "header", "header_name": "X-Key"})
    assert errors == {} and clean["header_name"] == "X-Key"


ABSOLUTE = "Enter an absolute http(s) URL, like https://api.example.com."
AUTHORITY = "Use a host name or IPv4 address (an international name in its xn-- form) and a port up to 65535."


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://[api.example.com", ABSOLUTE),  # urlsplit: "Invalid IPv6 URL"
        ("http://[::1", ABSOLUTE),
        ("https://\uff03x", ABSOLUTE),  # a name that NFKC turns into "#"
        ("https://api.example.com:99999", AUTHORITY),
        ("https://h:x/", AUTHORITY),
        ("https://[::1]/", AUTHORITY),
    ],
)
def test_a_url_the_parser_refuses_is_a_field_error_not_a_crash(url: str, message: str) -> None:
    # Found by the OpenAPI fuzzer: urlsplit raises ValueError on an unbalanced "[" or a bad port. The API schema's
    # URL pattern refuses the same values (tests/integration/test_openapi.py fuzzes both).
    _, errors = validate_submission(_entry("generic_api_key"), "config", {"base_url": url, "auth_type": "bearer"})
    assert errors == {"base_url": message}
    assert re.fullmatch(URL_PATTERN, url) is None


def test_visibility_follows_booleans_lists_and_the_other_set() -> None:
    google = _entry("google")
    assert visibility(google, "config", {"jit": False})["allowed_domains"] is False
    assert visibility(google, "config", {"jit": True})["allowed_domains"] is True
    smtp = _entry("smtp")
    assert visibility(smtp, "account", {"auth_mechanism": "LOGIN"})["password"] is True
    assert visibility(smtp, "account", {"auth_mechanism": "XOAUTH2"})["password"] is False
    generic = _entry("generic_api_key")
    basic = {"config": {"auth_type": "basic"}}
    bearer = {"config": {"auth_type": "bearer"}}
    assert visibility(generic, "account", {}, basic)["api_secret"] is True  # type: ignore[arg-type]
    assert visibility(generic, "account", {}, bearer)["api_secret"] is False  # type: ignore[arg-type]
    _, errors = validate_submission(generic, "account", {"api_key": "k"}, context=basic)  # type: ignore[arg-type]
    assert errors == {"api_secret": "This field is required."}


def test_hiding_cascades(tmp_path: Path) -> None:
    """C depends on B, B on A: with A off, C is hidden even though B's stale value would match."""
    data = yaml.safe_load((registry.CATALOG_DIR / "ami_credentials.yaml").read_text())
    data["config_fields"] = [
        {"name": "a", "label": "A", "type": "boolean", "default": False},
        {
            "name": "b",
            "label": "B",
            "type": "enum",
            "enum": [{"value": "x", "label": "X"}],
            "visible_when": {"a": True},
        },
        {"name": "c", "label": "C", "type": "string", "required": True, "visible_when": {"b": "x"}},
    ]
    path = tmp_path / "ami_credentials.yaml"
    path.write_text(yaml.safe_dump(data))
    provider = load_entry(path)
    assert visibility(provider, "config", {"a": False, "b": "x"}) == {"a": True, "b": False, "c": False}
    assert validate_submission(provider, "config", {"a": False, "b": "x"})[1] == {}
    assert validate_submission(provider, "config", {"a": True, "b": "x"})[1] == {"c": "This field is required."}


def test_secrets_blank_keeps_required_missing_and_admin_only() -> None:
    google = _entry("google")
    data = {"client_id": "1-a.apps.googleusercontent.com"}
    _, errors = validate_submission(google, "config", data)
    assert errors == {"client_secret": "This field is required."}
    clean, errors = validate_submission(google, "config", {**data, "client_secret": ""}, secrets_set={"client_secret"})
    assert errors == {} and "client_secret" not in clean
    clean, errors = validate_submission(google, "config", {**data, "client_secret": " s3cret "})
    assert isinstance(clean["client_secret"], Secret) and clean["client_secret"].reveal() == "s3cret"
    smtp = _entry("smtp")
    account = {"from_address": "a@example.com", "daily_send_cap": 10}
    _, errors = validate_submission(smtp, "account", account, as_admin=False)
    assert errors == {"daily_send_cap": "Only an administrator can set this."}
    clean, errors = validate_submission(smtp, "account", account)
    assert errors == {} and clean["daily_send_cap"] == 10
    _, errors = validate_submission(google, "config", {**data, "client_secret": "x", "colour": "red"})
    assert errors == {"colour": "This is not a field of this provider type."}


def test_field_types_coerce_and_explain() -> None:
    smtp = _entry("smtp")
    base = {"host": "smtp.example.com"}
    for raw, message in (("12abc", "Enter a whole number."), ("0", "Use a number from 1 to 65535.")):
        assert validate_submission(smtp, "config", {**base, "port": raw})[1] == {"port": message}
    assert validate_submission(smtp, "config", {**base, "port": " 2525 "})[0]["port"] == 2525
    assert validate_submission(smtp, "config", {**base, "security": "tls"})[1]["security"].startswith("Choose one of")
    google = _entry("google")
    ok = {"client_id": "1-a.apps.googleusercontent.com", "client_secret": "s"}
    clean, _ = validate_submission(google, "config", {**ok, "scopes": "openid, email\nopenid  profile"})
    assert clean["scopes"] == ["openid", "email", "profile"]
    assert validate_submission(google, "config", {**ok, "trust_email": "maybe"})[1] == {
        "trust_email": "Choose yes or no."
    }
    assert validate_submission(google, "config", {**ok, "trust_email": "on"})[0]["trust_email"] is True
    # An issuer is compared byte for byte (OIDC Discovery §4.3): kept exactly; a base URL loses its slash.
    clean, errors = validate_submission(google, "config", {**ok, "issuer": "https://tenant.auth0.example/"})
    assert errors == {} and clean["issuer"] == "https://tenant.auth0.example/"
    generic = _entry("generic_api_key")
    assert validate_submission(generic, "config", {"base_url": "https://api.example.com/"})[0]["base_url"] == (
        "https://api.example.com"
    )
    _, errors = validate_submission(google, "config", {**ok, "issuer": "https://user:pw@issuer.example"})
    assert "Leave user names and passwords out" in errors["issuer"]
    _, errors = validate_submission(google, "config", {**ok, "hosted_domain": "exa\x00mple.com"})
    assert "control characters" in errors["hosted_domain"]
    account = validate_submission(smtp, "account", {"from_address": "Mailer@Example.COM"})[0]
    assert account["from_address"] == "Mailer@example.com"


def test_implied_values_and_completeness() -> None:
    smtp = _entry("smtp")
    assert effective_values(smtp, "config", {"host": "h", "security": "ssl"})["port"] == 465
    assert effective_values(smtp, "config", {"host": "h", "security": "ssl", "port": 2465})["port"] == 2465
    assert effective_values(smtp, "config", {"host": "h"})["port"] == 587  # default starttls
    anthropic = _entry("anthropic")
    assert effective_values(anthropic, "account", {})["base_url"] == "https://api.anthropic.com"
    google = _entry("google")
    missing = missing_fields(google, "config", {"client_id": "1-a.apps.googleusercontent.com"}, secrets_set=())
    assert missing == {"client_secret": "This field is required."}
    assert missing_fields(google, "config", {"client_id": "1-a.apps.googleusercontent.com"}, {"client_secret"}) == {}


def test_connectivity_stub_answers_for_every_type_and_is_honest(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path}/x.db")
    for provider in get_catalog():
        if provider.auth_mode == AuthMode.SMTP:
            continue  # the SMTP connector tests its server (tests/integration/test_connectors.py)
        result = verify.connectivity_test(settings, provider, {}, {})
        assert result.status == "unavailable"
        if provider.auth_mode == AuthMode.API_KEY:
            assert result.message.startswith("nothing to test on the config alone")
    assert re.search("built in", verify.connectivity_test(settings, _entry("ami_credentials"), {}, {}).message)


# ------------------------------------------------------------------------------------------------- forms


def _form_app() -> Any:
    from flask import Flask
    from flask_babel import Babel

    app = Flask(__name__)
    app.config.update(SECRET_KEY="k" * 32, WTF_CSRF_ENABLED=False)
    Babel(app)  # the forms translate the catalog's words (English here: no locale selector, no user)
    return app


def test_account_form_drops_fields_the_config_rules_out_and_checks_the_rest() -> None:
    from app.providers.forms import provider_form_class

    generic = _entry("generic_api_key")
    with _form_app().test_request_context(method="POST", data={"api_key": "k1", "api_secret": "s1"}):
        bearer = provider_form_class(generic, "account", context={"config": {"auth_type": "bearer"}})()
        assert [item.spec.name for item in bearer.schema_fields()] == ["label", "api_key"]
        assert bearer.validate() and bearer.clean["api_key"].reveal() == "k1" and "api_secret" not in bearer.clean
    with _form_app().test_request_context(method="POST", data={"api_key": "k1"}):
        basic = provider_form_class(generic, "account", context={"config": {"auth_type": "basic"}})()
        assert not basic.validate()
        assert basic.api_secret.errors == ["This field is required."]


def test_member_forms_leave_out_admin_only_fields() -> None:
    from app.providers.forms import provider_form_class

    smtp = _entry("smtp")
    # A password needs its user name (the SMTP hook's cross-field rule).
    data = {"from_address": "a@example.com", "username": "mailer", "password": "pw"}
    with _form_app().test_request_context(method="POST", data=data):
        form = provider_form_class(smtp, "account", as_admin=False)()
        names = [item.spec.name for item in form.schema_fields()]
        assert "daily_send_cap" not in names and "password" in names
        assert form.validate() and "daily_send_cap" not in form.clean


def test_secret_text_fields_never_render_their_value(tmp_path: Path) -> None:
    from app.providers.forms import provider_form_class

    data = yaml.safe_load((registry.CATALOG_DIR / "generic_api_key.yaml").read_text())
    data["account_fields"].append(
        {"name": "private_key", "label": "Private key", "type": "text", "secret": True, "required": True}
    )
    path = tmp_path / "generic_api_key.yaml"
    path.write_text(yaml.safe_dump(data))
    provider = load_entry(path)
    pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQ\n-----END PRIVATE KEY-----"
    with _form_app().test_request_context(method="POST", data={"api_key": "k", "private_key": pem}):
        form = provider_form_class(provider, "account", context={"config": {"auth_type": "bearer"}})()
        html = str(form.private_key(autocomplete="off"))
        assert html.startswith("<textarea") and "BEGIN PRIVATE KEY" not in html and "MIIEvQ" not in html
        assert form.validate() and form.clean["private_key"].reveal() == pem
