"""`ami-auth providers export` → `providers apply`: one config of every catalog type, exported with its secrets as
`${env:…}` references, applied back with no change, and recreated on a fresh instance once the variables are set
(SQLite and PostgreSQL as the source; the fresh instance is a SQLite file of its own)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from flask import Flask

from app import audit, create_app
from app.extensions import get_cipher, get_database, get_settings
from app.providers import configs
from app.providers.registry import entry, get_catalog
from app.providers.validation import validate_submission
from app.vault import Secret
from tests.conftest import dispose_app, make_settings
from tests.integration.test_catalog_contract import CONTRACT


def _run(app: Flask, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = app.test_cli_runner().invoke(args=list(args), env=env)
    return result.exit_code, result.output  # stdout and stderr


def _seed(app: Flask) -> dict[str, str]:
    """One config per catalog type (every other one enabled); returns every secret value stored."""
    stored: dict[str, str] = {}
    with app.app_context():
        db = get_database(app).session()
        for index, provider in enumerate(get_catalog()):
            clean, errors = validate_submission(provider, "config", dict(CONTRACT[provider.id].config))
            assert not errors, (provider.id, errors)
            name = f"{provider.display_name} #{index} (exported)"
            cfg = configs.create_config(
                db,
                get_cipher(app),
                get_settings(app),
                audit.AuditContext(actor="test"),
                provider,
                name,
                clean,
                enabled=index % 2 == 0,
            )
            for spec in provider.config_fields:
                if spec.secret and isinstance(clean.get(spec.name), Secret | str):
                    value = clean[spec.name]
                    stored[f"{cfg.id}:{spec.name}"] = value.reveal() if isinstance(value, Secret) else value
        db.commit()
    return stored


def _snapshot(app: Flask) -> list[tuple[str, str, bool, dict[str, Any], dict[str, str | None]]]:
    """Every config as a user of it sees it: name, type, enabled, settings and decrypted secrets."""
    with app.app_context():
        db = get_database(app).session()
        rows = []
        for cfg in configs.list_configs(db):
            provider = entry(cfg.provider_type)
            secrets = configs.read_secrets(db, get_cipher(app), provider, cfg)
            shown = {k: (v.reveal() if v is not None else None) for k, v in secrets.items()}
            rows.append((cfg.name, cfg.provider_type, cfg.enabled, dict(cfg.config or {}), shown))
        db.rollback()
        return sorted(rows, key=lambda row: row[0])


def test_export_apply_round_trip_and_a_fresh_instance(app: Flask, tmp_path: Path) -> None:
    secrets = _seed(app)
    assert secrets, "the catalog has secret config fields; the round trip must carry some"
    exported = tmp_path / "providers.yaml"
    code, out = _run(app, "providers", "export", "--output", str(exported))
    assert code == 0, out
    text = exported.read_text()
    # Never a value: only references, one per secret that is set, each named on stderr and in the header.
    for value in secrets.values():
        assert value not in text and value not in out
    references = re.findall(r"\$\{env:(AMI_PROVIDER_[A-Z0-9_]+)\}", text)
    assert len(references) == len(set(references)) == len(secrets)
    for name in references:
        assert f"#   {name}: " in text and f"  {name}: " in out
    items = yaml.safe_load(text)["providers"]
    assert {item["type"] for item in items} == {e.id for e in get_catalog()}

    # The secret store's values, under the names the file asks for (export order = list order).
    env: dict[str, str] = {}
    with app.app_context():
        db = get_database(app).session()
        by_name = {cfg.name: cfg.id for cfg in configs.list_configs(db)}
    for item in items:
        for field_name, value in item["config"].items():
            match = re.fullmatch(r"\$\{env:(\w+)\}", str(value))
            if match:
                env[match.group(1)] = secrets[f"{by_name[item['name']]}:{field_name}"]

    # Applied back where it came from: nothing to do.
    code, out = _run(app, "providers", "apply", "--dry-run", str(exported), env=env)
    assert code == 0, out
    plan = [line for line in out.splitlines() if line and not line.startswith("dry run")]
    assert len([line for line in plan if line.startswith("unchanged ")]) == len(items), out
    changes = [line for line in plan if not re.match(r"unchanged |  = \w+: secret, unchanged from \$\{env:", line)]
    assert changes == [], out

    # A fresh instance: refused (nothing written) without the variables, recreated with them.
    fresh_settings = make_settings(tmp_path / "fresh", f"sqlite:///{tmp_path / 'fresh.db'}")
    from app.migrate import upgrade

    upgrade(fresh_settings.database_url)
    fresh = create_app(fresh_settings)
    try:
        code, out = _run(fresh, "providers", "apply", str(exported))
        assert code == 1 and f"environment variable {references[0]} is not set" in out and "nothing was written" in out
        assert _snapshot(fresh) == []
        code, out = _run(fresh, "providers", "apply", str(exported), env=env)
        assert code == 0, out
        assert f"applied: {len(items)} created, 0 updated, 0 unchanged" in out
        assert _snapshot(fresh) == _snapshot(app)
        # …and it exports to the same file.
        again = tmp_path / "again.yaml"
        assert _run(fresh, "providers", "export", "-o", str(again))[0] == 0
        assert again.read_text() == text
    finally:
        dispose_app(fresh)
