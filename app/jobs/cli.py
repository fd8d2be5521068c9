"""``ami-auth jobs …``: run a job once (for cron or a systemd timer)."""

from __future__ import annotations

import click
from flask.cli import AppGroup, with_appcontext

from app.extensions import get_database, get_settings
from app.jobs.reminders import send_reminders
from app.jobs.secrets import purge_secrets

jobs_cli = AppGroup("jobs", help="Periodic jobs: purge replaced secrets, rotation reminders.")


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
