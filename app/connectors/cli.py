"""``ami-auth accounts list|test ID|delete ID`` — connected API-key and SMTP accounts."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext

from app import audit
from app.connectors import accounts
from app.errors import AppError
from app.extensions import get_cipher, get_database, get_settings
from app.net import get_client

accounts_cli = AppGroup("accounts", help="Connected API-key and SMTP accounts.")
CLI = audit.AuditContext(actor="cli")


def _when(value: object) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if hasattr(value, "strftime") else "never"


def _fail(exc: AppError) -> click.ClickException:
    detail = "; ".join(f"{k}: {v}" for k, v in exc.fields.items()) or exc.help
    return click.ClickException(f"{exc.code}: {exc.text} {detail}")


@accounts_cli.command("list")
@click.option("--overdue", is_flag=True, help="Only accounts past their rotation policy.")
@with_appcontext
def list_command(overdue: bool) -> None:
    """One line per account: id, provider, label, status, rotated, last used, last verified, last error."""
    db = get_database().session()
    rows = accounts.list_accounts(db)
    for account in rows:
        state = accounts.rotation_state(account)
        if overdue and not state.overdue:
            continue
        provider = accounts.entry_for(account)
        flags = " ROTATION-OVERDUE" if state.overdue else ""
        error = f" error={account.last_error_code}" if account.last_error_code else ""
        click.echo(
            f"{account.id}\t{provider.id}\t{account.label}\t{account.status}{flags}\t"
            f"rotated={_when(account.rotated_at)}\tused={_when(account.last_used_at)}\t"
            f"verified={_when(account.last_verified_at)}{error}"
        )
    if not rows:
        click.echo("no accounts")


@accounts_cli.command("test")
@click.argument("account_id", type=int)
@with_appcontext
def test_command(account_id: int) -> None:
    """Verify an account's stored credentials against its provider (exit 1 when refused)."""
    db = get_database().session()
    try:
        account = accounts.get_account(db, account_id)
        result = accounts.verify_stored(db, get_cipher(), get_client(current_app), get_settings(), CLI, account)
    except AppError as exc:
        db.rollback()
        raise _fail(exc) from None
    db.commit()
    if result.error is not None:
        raise _fail(result.error)
    click.echo(f"{result.status}: {result.message}")
    for key, value in result.learned.items():
        click.echo(f"  {key}: {value}")


@accounts_cli.command("delete")
@click.argument("account_id", type=int)
@click.option("--skip-revoke", is_flag=True, help="Delete even if the provider's revoke request fails.")
@click.confirmation_option(prompt="Delete the account and every stored value of its secret?")
@with_appcontext
def delete_command(account_id: int, skip_revoke: bool) -> None:
    """Revoke (where the provider can), then delete the account and its ciphertext."""
    db = get_database().session()
    try:
        account = accounts.get_account(db, account_id)
        label = account.label
        result = accounts.delete_account(
            db, get_cipher(), get_client(current_app), CLI, account, skip_revoke=skip_revoke
        )
    except AppError as exc:
        db.commit()  # keep the audit record of a refused revocation
        raise _fail(exc) from None
    db.commit()
    accounts.scrub_deleted(db)
    click.echo(f"deleted {label} ({result.secret_rows_deleted} stored value(s))")
    if result.revoked:
        click.echo("the provider confirmed the revocation")
    elif result.hint:
        click.echo(result.hint)
