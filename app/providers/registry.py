"""Load the provider catalog: YAML files → field groups expanded → JSON Schema check → typed entries →
cross-checks (:mod:`app.providers.crosschecks`). Any problem stops start-up with the file, the JSON path
and the reason.

The catalog is the shipped folder (``app/providers/catalog/``) plus, when ``AMI_AUTH_CATALOG_DIR`` names
one, an operator's folder of further entries in the same format. Ids are the file names; there is no list
of them anywhere else. The app factory activates the catalog its settings name (:func:`init_providers`);
:func:`get_catalog` and :func:`entry` read the app's in an app context, else the one last activated, so code
outside a request (the jobs' threads) sees the same catalog as the views of the app that runs them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, current_app, has_app_context

from app.errors import AppError
from app.providers.crosschecks import check_entry
from app.providers.entries import ProviderEntry
from app.providers.groups import expand
from app.providers.loading import SCHEMA_PATH, CatalogError, load_schema, read_yaml, schema_check
from app.providers.parsing import parse_entry
from app.providers.templating import TOKEN_NAMES, render_template_string
from app.providers.types import AuthProviderType
from app.providers.validation import effective_values
from app.settings import Settings

__all__ = [
    "CATALOG_DIR",
    "SCHEMA_PATH",
    "Catalog",
    "CatalogError",
    "activate",
    "catalog_for",
    "entry",
    "get_catalog",
    "init_providers",
    "load_catalog",
    "load_entry",
    "load_schema",
    "render_template_string",
    "template_scopes",
]

CATALOG_DIR = Path(__file__).resolve().parent / "catalog"


@dataclass(frozen=True)
class Catalog:
    """Every provider type, in list order (each entry's `order`, then its id)."""

    entries: Mapping[AuthProviderType, ProviderEntry]

    def __iter__(self) -> Iterator[ProviderEntry]:
        return iter(self.entries.values())

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, provider_type: AuthProviderType) -> ProviderEntry:
        return self.entries[provider_type]

    def __contains__(self, provider_type: object) -> bool:
        return provider_type in self.entries

    def get(self, provider_type: str) -> ProviderEntry | None:
        return self.entries.get(AuthProviderType(provider_type))

    def ids(self, where: Callable[[ProviderEntry], bool] | None = None) -> tuple[AuthProviderType, ...]:
        """Every id, or those of the entries ``where`` holds for (``lambda e: e.capabilities.signin``)."""
        return tuple(key for key, found in self.entries.items() if where is None or where(found))


def load_entry(file: Path) -> ProviderEntry:
    data = read_yaml(file)
    schema_check(file, data)
    expanded = expand(file, data)
    if expanded != data:
        schema_check(file, expanded)  # the group's fields, with the entry's overrides
    found = parse_entry(file, expanded)
    check_entry(found)
    return found


def load_catalog(directory: Path | None = None, *extra: Path) -> Catalog:
    """Read and check every `*.yaml` in ``directory`` (default: the shipped catalog) and the ``extra``
    folders; raises CatalogError at the first problem."""
    found: dict[AuthProviderType, ProviderEntry] = {}
    for folder in (directory or CATALOG_DIR, *extra):
        for file in sorted(folder.glob("*.yaml")):
            loaded = load_entry(file)
            if loaded.id in found:
                raise CatalogError(file, "$.id", f"{loaded.id!r} is also declared in {found[loaded.id].source}")
            found[loaded.id] = loaded
    ordered = sorted(found.values(), key=lambda e: (e.order, e.id))
    return Catalog({e.id: e for e in ordered})


_LOADED: dict[tuple[Path, ...], Catalog] = {}
_ACTIVE: list[tuple[Path, ...]] = [()]


def _catalog_for(extra: tuple[Path, ...]) -> Catalog:
    folders = (CATALOG_DIR, *extra)
    if folders not in _LOADED:
        _LOADED[folders] = load_catalog(*folders)
    return _LOADED[folders]


def activate(extra: tuple[Path, ...] = ()) -> Catalog:
    """Make the shipped catalog plus ``extra`` folders the one :func:`get_catalog` returns (loaded once)."""
    catalog = _catalog_for(extra)
    _ACTIVE[0] = extra
    return catalog


def catalog_for(settings: Settings) -> Catalog:
    """The catalog an app with these settings serves (what :func:`init_providers` activates for it)."""
    return _catalog_for((settings.catalog_dir,) if settings.catalog_dir is not None else ())


def get_catalog() -> Catalog:
    """The catalog of the app in context, else the last one activated (jobs' threads, the CLI): loaded and
    checked once per process per set of folders."""
    if has_app_context():
        found = current_app.extensions.get("ami_catalog")
        if isinstance(found, Catalog):
            return found
    return _catalog_for(_ACTIVE[0])


def entry(provider_type: AuthProviderType | str) -> ProviderEntry:
    """The entry for a type; an unknown type string is a ``not_found`` (it usually came from a URL)."""
    found = get_catalog().get(provider_type)
    if found is None:
        raise AppError("not_found", f"There is no provider type {str(provider_type)[:40]!r}.")
    return found


def init_providers(app: Flask) -> Catalog:
    """Load, check and activate the catalog at start-up: a bad entry stops create_app with a CatalogError."""
    settings: Settings = app.extensions["ami_settings"]
    catalog = activate((settings.catalog_dir,) if settings.catalog_dir is not None else ())
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
    return {
        "config": effective_values(provider, "config", config or {}),
        "account": effective_values(provider, "account", account or {}),
        "secret": {
            s.name: (secrets or {}).get(s.name) for s in (*provider.config_fields, *provider.account_fields) if s.secret
        },
        "token": {name: (token or {}).get(name) for name in TOKEN_NAMES},
    }
