"""``ami-auth jobs …``: run a job once (for cron or a systemd timer); and ``ami-auth tokens refresh``, the
OAuth token refresh (a command of the ``tokens`` group, which app/api/cli.py owns), safe beside the in-app
scheduler.
"""

from __future__ import annotations

from datetime import timedelta

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext

from app.extensions import get_database, get_settings
from app.jobs.refresh import run_refresh
from app.jobs.reminders import send_reminders
from app.jobs.secrets import purge_secrets
from app.jobs.unverified import run_verify_unverified
from app.oauth.runtime import runtime

jobs_cli = AppGroup(
    "jobs", help="Periodic jobs: purge replaced secrets, rotation reminders, verify accounts saved unverified."
)


@jobs_cli.command("verify-unverified")
@with_appcontext
def verify_unverified_command() -> None:
    """Verify the accounts saved unverified while their provider could not be reached (one line each)."""
    results = run_verify_unverified(current_app)
    if not results:
        click.echo("no account is waiting for verification")
    for account, result in results:
        outcome = "verified" if result.error is None else f"{account.status}: {result.error.text}"
        click.echo(f"{account.id}\t{account.label}\t{outcome}")


@jobs_cli.command("purge-secrets")
@with_appcontext
def purge_secrets_command() -> None:
    """Delete replaced secret values whose rollback grace period (AMI_AUTH_SECRET_GRACE_DAYS) is over."""
    count = purge_secrets(get_database().session())
    click.echo(f"purged {count} replaced secret value(s)")


@jobs_cli.command("reminders")
@with_appcontext
def reminders_command() -> None:
    """Mail the admins a digest of accounts past their rotation policy (prints it too)."""
    digest = send_reminders(get_database().session(), get_settings())
    if not digest.accounts:
        click.echo("no account is past its rotation policy")
        return
    click.echo(digest.text, nl=False)
    if digest.sent_to:
        click.echo(f"digest sent to {', '.join(digest.sent_to)}")
    for error in digest.errors:
        click.echo(f"not sent: {error}", err=True)
    if not digest.sent_to:
        raise click.ClickException("the digest was not mailed to any admin")


@click.command("refresh")
@click.option("--margin", type=click.IntRange(min=0), default=None, help="Minutes ahead of expiry (default: setting).")
@click.option("--workers", type=click.IntRange(1, 64), default=4, show_default=True, help="Parallel refreshes.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Handle at most this many accounts.")
@with_appcontext
def refresh_command(margin: int | None, workers: int, limit: int | None) -> None:
    """Refresh connected accounts' OAuth tokens that expire within the margin.

    Any number of these may run at once (and beside the in-app scheduler): each account is claimed
    before it is refreshed, so none is refreshed twice.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    minutes = margin if margin is not None else get_settings().token_refresh_margin_minutes
    report = run_refresh(
        runtime(app), get_database(app).engine, margin=timedelta(minutes=minutes), workers=workers, limit=limit
    )
    click.echo(f"token refresh: {report.summary()}")
