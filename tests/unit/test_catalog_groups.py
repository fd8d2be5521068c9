"""Field groups, capabilities and the layers around the catalog.

- Every shipped entry's expanded fields (what the forms, the schema API and validation see) equal what main
  produced before the groups existed (tests/fixtures/catalog_fields_main.json, written from main's code; rewritten
  since only where a later issue changed a field on purpose: the API issue's `role_mapping` and strict per-type
  JSON Schemas; the sign-in issue's `button_label`; the proxy's `api_url`/`api_base_url`; Google's device client,
  Anthropic's region (its unused `workspace_id` dropped), Hugging Face's `required_permissions`; the webhooks
  issue's `end_users_connect`, and the OAuth types' since end users connect through the consent screen too; the URL
  and string patterns narrowed to exactly what the server accepts).
- An include names a group that exists, an override a field of it; the JSON Schema checks both.
- What each shipped type can do is derived from its auth mode or declared once, never from its id.
- The OAuth protocol core imports no database, Flask or catalog; the catalog's hooks import no connector.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.api.schema import provider_schema
from app.providers import registry
from app.providers.groups import load_groups
from app.providers.registry import CatalogError, get_catalog, load_catalog
from app.providers.types import AuthProviderType
from app.web.oauth import note_markup

ROOT = Path(__file__).resolve().parents[2]
PINNED = ROOT / "tests" / "fixtures" / "catalog_fields_main.json"


def _expanded(entry_id: str) -> dict[str, Any]:
    entry = get_catalog()[AuthProviderType(entry_id)]
    fields = {
        which: [{"order": s.order, "field": dict(s.raw)} for s in entry.fields(which)]
        for which in ("config", "account")
    }
    # Through JSON, as the fixture was written (tuples become lists, conditions their raw form).
    expanded: dict[str, Any] = json.loads(json.dumps({"fields": fields, "schema": provider_schema(entry)}, default=str))
    return expanded


@pytest.mark.parametrize("entry_id", sorted(json.loads(PINNED.read_text())))
def test_expanded_fields_equal_what_main_produced(entry_id: str) -> None:
    assert _expanded(entry_id) == json.loads(PINNED.read_text())[entry_id]


def test_the_groups_are_included_where_the_fields_were_repeated() -> None:
    groups = load_groups()
    assert set(groups) == {"sign_in_policy", "device_flow", "rotation_reminder", "end_user_connect"}
    included: dict[str, list[str]] = {}
    for file in sorted(registry.CATALOG_DIR.glob("*.yaml")):
        data = yaml.safe_load(file.read_text())
        for item in [*data["config_fields"], *data["account_fields"]]:
            if "include" in item:
                included.setdefault(item["include"], []).append(file.stem)
    # The entries that repeated these fields before the groups existed (a type added later may include them too).
    assert {"azure_ad", "generic_oidc", "github", "google"} <= set(included["sign_in_policy"])
    assert {"azure_ad", "generic_oidc", "github"} <= set(included["device_flow"])
    assert {"anthropic", "generic_api_key", "huggingface", "openai", "smtp"} <= set(included["rotation_reminder"])
    # Every type whose accounts are typed in (API key, SMTP) or connected through consent (OAuth) may let end users
    # connect their own.
    assert {"anthropic", "generic_api_key", "huggingface", "openai", "smtp"} <= set(included["end_user_connect"])
    assert {"azure_ad", "generic_oidc", "github", "google"} <= set(included["end_user_connect"])
    # The rotation reminder's default is the entry's own policy, stated once.
    for entry_id in included["rotation_reminder"]:
        entry = get_catalog()[AuthProviderType(entry_id)]
        spec = entry.field("config", "rotation_days")
        assert spec is not None and spec.default == entry.rotation_days


@pytest.fixture
def catalog_copy(tmp_path: Path) -> Path:
    target = tmp_path / "catalog"
    shutil.copytree(registry.CATALOG_DIR, target)
    return target


def _edit(directory: Path, name: str, change: Any) -> None:
    path = directory / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _fails(directory: Path) -> CatalogError:
    with pytest.raises(CatalogError) as info:
        load_catalog(directory)
    return info.value


@pytest.mark.parametrize(
    ("change", "path", "reason"),
    [
        (lambda d: d["config_fields"][5].update(include="sign_in"), "$.config_fields[5].include", "no field group"),
        (
            lambda d: d["config_fields"][5].update(override={"trust": {"default": True}}),
            "$.config_fields[5].override.trust",
            "has no field 'trust'",
        ),
        # The overridden field is checked like any other: a boolean's default must be a boolean.
        (
            lambda d: d["config_fields"][5].update(override={"jit": {"default": "yes"}}),
            "$.config_fields[8].default",  # expanded: signin, button_label, trust_email, jit
            "'yes' is not of type 'boolean'",
        ),
        (
            lambda d: d["config_fields"][5].update(override={"jit": {"name": "jut"}}),
            "$.config_fields[5].override.jit",
            "should not be valid",
        ),
    ],
)
def test_includes_and_overrides_are_checked(catalog_copy: Path, change: Any, path: str, reason: str) -> None:
    # google.yaml's config_fields: client_id, client_secret, hosted_domain, scopes, access_type, then [5] the
    # sign_in_policy include (signin, trust_email, jit, allowed_domains: [5] to [8] once expanded), issuer.
    _edit(catalog_copy, "google", change)
    error = _fails(catalog_copy)
    assert error.file.endswith("google.yaml"), error
    assert error.json_path == path, error
    assert reason in error.reason, error


CAPABILITIES = {
    # id: (sign-in, connect, refresh, revoke, verify, XOAUTH2, device flow)
    "ami_credentials": (False, "none", "none", "none", "none", False, False),
    "google": (True, "oauth", "standard", "request", "discovery", True, True),  # device flow: its second client
    "github": (True, "oauth", "standard", "request", "http", False, True),
    "azure_ad": (True, "oauth", "standard", "unsupported", "discovery", True, True),
    "generic_oidc": (True, "oauth", "standard", "request", "discovery", True, True),
    "openai": (False, "secret", "none", "unsupported", "http", False, False),
    "anthropic": (False, "secret", "none", "unsupported", "http", False, False),
    "huggingface": (False, "secret", "none", "unsupported", "http", False, False),
    "generic_api_key": (False, "secret", "none", "unsupported", "http", False, False),
    "smtp": (False, "secret", "none", "none", "smtp", False, False),
}


def test_capabilities_of_the_shipped_types() -> None:
    catalog = get_catalog()
    assert set(CAPABILITIES) <= set(catalog.ids())  # a type added later needs no row here
    for entry in catalog:
        c = entry.capabilities
        if entry.id in CAPABILITIES:
            got = (c.signin, c.connect, c.refresh, c.revoke, c.verify, c.xoauth2, c.device_flow)
            assert got == CAPABILITIES[entry.id], entry.id
        if c.oauth:
            # Every OAuth type tells the admin how to register the app, and has its page in docs/providers/.
            assert entry.notes.setup and c.docs_page == f"docs/providers/{entry.id}.md"
            assert (ROOT / c.docs_page).is_file()
    xoauth2 = catalog.ids(lambda e: e.capabilities.xoauth2)
    assert {"google", "azure_ad", "generic_oidc"} <= set(xoauth2) and "github" not in xoauth2


def test_setup_notes_markup_is_escaped_text_with_three_marks() -> None:
    html = str(note_markup("Keep `user:email` & **this**; *Web* <script>x</script>"))
    assert html == (
        "Keep <code>user:email</code> &amp; <strong>this</strong>; <em>Web</em> &lt;script&gt;x&lt;/script&gt;"
    )


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


OAUTH_CORE = ("discovery", "flow", "id_token", "tokens", "revocation", "device")


@pytest.mark.parametrize("module", OAUTH_CORE)
def test_the_oauth_core_has_no_database_flask_or_catalog(module: str) -> None:
    imports = _imports(ROOT / "app" / "oauth" / f"{module}.py")
    forbidden = {"flask", "sqlalchemy", "app.models", "app.extensions", "app.vault"}
    bad = {
        i
        for i in imports
        if i.split(".")[0] in forbidden or i in forbidden or i.startswith(("app.providers", "app.models"))
    }
    assert bad == set()
    assert {i for i in imports if i.startswith("app.oauth.")} <= {f"app.oauth.{m}" for m in OAUTH_CORE}


def test_hooks_import_only_the_catalog() -> None:
    for path in sorted((ROOT / "app" / "providers" / "hooks").glob("*.py")):
        imports = {i for i in _imports(path) if i.startswith("app.")}
        assert all(i.startswith("app.providers") or i == "app.errors" for i in imports), (path.name, imports)
