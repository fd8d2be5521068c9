"""``ami-auth mfa …``: the way back in for an account whose factors and recovery codes are all lost — in
particular the only admin, who has nobody to press "Reset MFA" for them in the console."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from app import audit
from app.auth import users
from app.extensions import get_database
from app.services import mfa as mfa_flows

mfa_cli = AppGroup("mfa", help="Second factors.")


@mfa_cli.command("reset")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def reset_command(email: str, yes: bool) -> None:
    """Remove every second factor and recovery code of a user (audited as mfa.reset)."""
    db = get_database().session()
    user = users.get_by_email(db, email)
    if user is None:
        raise click.ClickException(f"no user with email {email!r}")
    if not yes:
        click.confirm(f"Remove every second factor of {user.email}?", abort=True)
    counts = mfa_flows.reset(db, audit.AuditContext(actor="cli"), user, via="cli")
    db.commit()
    removed = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in counts.items())
    click.echo(f"reset MFA of {user.email}: removed {removed}")
