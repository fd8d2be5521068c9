"""``ami-auth tokens …`` (service tokens) and ``ami-auth compliance report``."""

from __future__ import annotations

import json

import click
from flask.cli import AppGroup

from app import audit
from app.api import tokens
from app.api.compliance import build_report, report_json, report_text
from app.errors import AppError
from app.extensions import get_database, get_settings
from app.models import utcnow
from app.providers.registry import get_catalog

tokens_cli = AppGroup("tokens", help="Service tokens for the JSON API.")
compliance_cli = AppGroup("compliance", help="The compliance report.")

_CLI = audit.AuditContext(actor="cli")


def _fail(exc: AppError) -> click.ClickException:
    detail = "; ".join(f"{k}: {v}" for k, v in exc.fields.items()) or exc.help
    return click.ClickException(f"{exc.text} {detail}")


@tokens_cli.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(list(tokens.SCOPES)),
    help="Repeat for each scope.",
)
@click.option("--expires-days", type=click.IntRange(1, tokens.EXPIRES_DAYS_MAX), default=None, help="Default: never.")
@click.option(
    "--account",
    "account_ids",
    multiple=True,
    type=click.IntRange(1),
    help="Only this connected account (repeat for more): limits the account scopes (proxy, token, headers).",
)
@click.option(
    "--provider-type",
    "provider_types",
    multiple=True,
    help="Only accounts of this provider type (repeat for more), e.g. openai.",
)
def tokens_create(
    name: str,
    scopes: tuple[str, ...],
    expires_days: int | None,
    account_ids: tuple[int, ...],
    provider_types: tuple[str, ...],
) -> None:
    """Create a token and print it once (only its hash is stored)."""
    unknown = sorted(set(provider_types) - set(get_catalog().ids()))
    if unknown:
        raise click.BadParameter(f"unknown provider type {unknown[0]!r}", param_hint="--provider-type")
    db = get_database().session()
    limits = (
        tokens.AccountLimits(frozenset(account_ids), frozenset(provider_types))
        if account_ids or provider_types
        else None
    )
    try:
        issued = tokens.create_token(
            db, _CLI, name=name, scopes=scopes, created_by=None, expires_days=expires_days, limits=limits
        )
        db.commit()
    except AppError as exc:
        db.rollback()
        raise _fail(exc) from None
    record = issued.record
    expires = record.expires_at.strftime("%Y-%m-%d %H:%M UTC") if record.expires_at else "never"
    click.echo(
        f"created token {record.id} {record.name!r}: scopes {' '.join(record.scopes)}; expires {expires}", err=True
    )
    click.echo("Store it now; it cannot be shown again:", err=True)
    # The token alone on stdout, so `ami-auth tokens create … > file` or `$(…)` captures just it.
    click.echo(issued.raw)


@tokens_cli.command("list")
def tokens_list() -> None:
    """List tokens: id, status, prefix, name, scopes, expiry and last use (never the token)."""
    now = utcnow()
    rows = tokens.list_tokens(get_database().session())
    if not rows:
        click.echo("no service tokens")
        return
    for t in rows:
        expires = t.expires_at.strftime("%Y-%m-%d") if t.expires_at else "never"
        used = t.last_used_at.strftime("%Y-%m-%d %H:%M") if t.last_used_at else "never"
        click.echo(
            f"{t.id:>4}  {tokens.status(t, now):<8} {t.prefix}…  {t.name!r}  scopes={','.join(t.scopes)}  "
            f"expires={expires}  last_used={used}"
        )


@tokens_cli.command("revoke")
@click.argument("token_id", type=int)
def tokens_revoke(token_id: int) -> None:
    """Revoke a token by id; calls with it get 401 from now on."""
    db = get_database().session()
    try:
        record = tokens.revoke_token(db, _CLI, token_id)
        db.commit()
    except AppError as exc:
        db.rollback()
        raise _fail(exc) from None
    click.echo(f"revoked token {record.id} {record.name!r} ({record.prefix}…)")


@compliance_cli.command("report")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON of GET /api/compliance/report.")
def compliance_report(as_json: bool) -> None:
    """Print the compliance report (the console page and the API show the same)."""
    report = build_report(get_database().session(), get_settings())
    if as_json:
        click.echo(json.dumps(report_json(report), indent=2))
    else:
        click.echo(report_text(report))
