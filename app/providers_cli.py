"""`ami-auth providers …`: list, show, test, enable, disable and apply provider configs.

Exit codes: 0 done; 1 refused or failed (the reason is printed); 3 for `test` when the type has no
connectivity test yet — so a script never mistakes "not tested" for "works".
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext

from app.audit import AuditContext
from app.connectors.verify import connectivity_test
from app.errors import AppError
from app.extensions import end_read, get_cipher, get_database, get_settings
from app.net import get_client
from app.providers import configs
from app.providers.apply import ApplyError, apply_file
from app.providers.config_test import ConnectionTest
from app.providers.entries import ProviderEntry
from app.providers.export import export_configs
from app.providers.validation import effective_values, labels
from app.vault import Secret, SecretUnreadable

providers_cli = AppGroup("providers", help="Provider configs: list, show, test, enable, disable, apply, export.")

EXIT_UNTESTED = 3
CLI_ACTOR = AuditContext(actor="cli")


def _fail(exc: AppError) -> click.ClickException:
    detail = exc.help
    if exc.fields:
        detail = "; ".join(f"{name}: {message}" for name, message in exc.fields.items())
    return click.ClickException(f"{exc.text} {detail}")


@providers_cli.command("list")
@with_appcontext
def list_command() -> None:
    """One line per provider config."""
    db = get_database().session()
    rows = configs.list_configs(db)
    if not rows:
        click.echo("no provider configs; add one in the console or with `ami-auth providers apply FILE`")
        return
    click.echo(f"{'ID':>4}  {'TYPE':<16} {'ENABLED':<8} {'SECRETS':<8} {'STATUS':<11} NAME")
    for cfg in rows:
        provider = configs.entry_for(cfg)
        states = configs.secret_states(db, provider, cfg)
        secrets = f"{sum(1 for m in states.values() if m)}/{len(states)}" if states else "-"
        status = "incomplete" if configs.missing_for_enable(db, cfg) else "ok"
        enabled = "yes" if cfg.enabled else "no"
        click.echo(f"{cfg.id:>4}  {cfg.provider_type:<16} {enabled:<8} {secrets:<8} {status:<11} {cfg.name}")


@providers_cli.command("show")
@click.argument("ref", metavar="ID")
@with_appcontext
def show_command(ref: str) -> None:
    """Settings of one config (by id or name); secrets show only whether they are set."""
    db = get_database().session()
    try:
        cfg = configs.find_config(db, ref)
    except AppError as exc:
        raise _fail(exc) from None
    provider = configs.entry_for(cfg)
    values = effective_values(provider, "config", cfg.config or {})
    states = configs.secret_states(db, provider, cfg)
    click.echo(f"#{cfg.id} {cfg.name}")
    click.echo(f"  type: {provider.id} ({provider.display_name}, {provider.auth_mode.value})")
    click.echo(f"  enabled: {'yes' if cfg.enabled else 'no'}")
    for spec in provider.config_fields:
        if spec.secret:
            meta = states.get(spec.name)
            shown = f"set · last changed {meta.created_at:%Y-%m-%d %H:%M} UTC" if meta else "not set"
        else:
            value = values.get(spec.name)
            shown = (
                "(not set)" if value is None else (" ".join(map(str, value)) if isinstance(value, list) else str(value))
            )
        click.echo(f"  {spec.name}: {shown}")
    missing = configs.missing_for_enable(db, cfg)
    if missing:
        click.echo("  missing or invalid: " + ", ".join(f"{k} ({v})" for k, v in missing.items()))


@providers_cli.command("test")
@click.argument("ref", metavar="ID")
@with_appcontext
def test_command(ref: str) -> None:
    """Run the type's connectivity test against the stored settings."""
    db = get_database().session()
    try:
        cfg = configs.find_config(db, ref)
        provider = configs.entry_for(cfg)
        secrets = configs.read_secrets(db, get_cipher(), provider, cfg)
    except SecretUnreadable as exc:
        raise click.ClickException(f"{exc.text} {exc.help}") from None
    except AppError as exc:
        raise _fail(exc) from None
    end_read(db)  # nothing held while the provider answers
    result = connectivity_test(
        get_settings(),
        provider,
        effective_values(provider, "config", cfg.config or {}),
        secrets,
        client=get_client(current_app),
    )
    click.echo(f"{cfg.name}: {result.status}: {result.message}")
    for key, value in result.learned.items():
        click.echo(f"  {key}: {value}")
    if result.status == "failed":
        sys.exit(1)
    if result.status == "unavailable":
        sys.exit(EXIT_UNTESTED)


def _set_enabled(ref: str, enabled: bool) -> None:
    db = get_database().session()
    try:
        cfg = configs.find_config(db, ref)
        changed = configs.set_enabled(db, CLI_ACTOR, cfg, enabled)
        db.commit()
    except AppError as exc:
        db.commit()  # keeps the audit record of a refused enable
        if exc.code == "invalid_config":
            names = labels(configs.entry_for(cfg), "config", exc.fields)
            raise click.ClickException(f"{exc.text} Missing or invalid: {', '.join(names)}.") from None
        raise _fail(exc) from None
    state = "enabled" if enabled else "disabled"
    click.echo(f"{cfg.name}: {state}" if changed else f"{cfg.name}: already {state}")


@providers_cli.command("enable")
@click.argument("ref", metavar="ID")
@with_appcontext
def enable_command(ref: str) -> None:
    """Enable a config; refused until its required settings are set and valid."""
    _set_enabled(ref, True)


@providers_cli.command("disable")
@click.argument("ref", metavar="ID")
@with_appcontext
def disable_command(ref: str) -> None:
    """Disable a config (sign-in and API use through it stop)."""
    _set_enabled(ref, False)


@providers_cli.command("apply")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Print the changes; write nothing.")
@click.option("--test", "run_test", is_flag=True, help="Connection-test every config before writing.")
@with_appcontext
def apply_command(file: Path, dry_run: bool, run_test: bool) -> None:
    """Create or update provider configs from FILE (matched by name). Secrets: ${env:X} or ${file:/path}."""
    db = get_database().session()
    try:
        settings, client = get_settings(), get_client(current_app)

        def test(
            provider: ProviderEntry, values: Mapping[str, Any], secrets: Mapping[str, Secret | None]
        ) -> ConnectionTest:
            return connectivity_test(settings, provider, values, secrets, client=client)

        plans, counts = apply_file(
            db, get_cipher(), settings, CLI_ACTOR, file, dry_run=dry_run, test=test if run_test else None
        )
    except ApplyError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        click.echo("nothing was written", err=True)
        sys.exit(1)
    for plan in plans:
        for line in plan.describe():
            click.echo(line)
    if counts is None:
        click.echo("dry run: nothing was written")
    else:
        click.echo(f"applied: {counts['create']} created, {counts['update']} updated, {counts['unchanged']} unchanged")


@providers_cli.command("export")
@click.option(
    "--output", "-o", type=click.Path(path_type=Path, dir_okay=False), help="Write to this file instead of stdout."
)
@with_appcontext
def export_command(output: Path | None) -> None:
    """Every provider config as YAML for `providers apply` (secrets as ${env:…} references, never values)."""
    exported = export_configs(get_database().session())
    if output is None:
        click.echo(exported.text, nl=False)
        return
    output.write_text(exported.text, encoding="utf-8")
    click.echo(f"wrote {output}; set these variables before `providers apply`:", err=True)
    for name, what in exported.variables:
        click.echo(f"  {name}: {what}", err=True)
