"""The `ami-auth` command line: a Flask CLI group (also available as `flask --app wsgi …`)."""

from __future__ import annotations

import sys

import click
from flask import Flask, current_app
from flask.cli import AppGroup, FlaskGroup, with_appcontext

from app import audit, create_app, faults
from app.api.cli import compliance_cli, tokens_cli
from app.audit_cli import audit_cli
from app.auth import mail_tokens, user_admin, users
from app.backup import backup_command, restore_command
from app.connectors.cli import accounts_cli
from app.errors import AppError
from app.extensions import get_database, get_settings
from app.idp.cli import oidc_cli
from app.jobs.cli import jobs_cli, refresh_command
from app.keys_cli import keys_cli
from app.mailer import Mailer
from app.mfa_cli import mfa_cli
from app.migrate import upgrade
from app.preflight import preflight
from app.providers_cli import providers_cli
from app.services import linked_identities
from app.settings import SettingsError
from app.webhooks_cli import webhooks_cli

db_cli = AppGroup("db", help="Database migrations.")
users_cli = AppGroup("users", help="Manage users.")
mail_cli = AppGroup("mail", help="The system mailer.")


@db_cli.command("upgrade")
@click.option("--revision", default="heads", show_default=True)
@with_appcontext
def db_upgrade(revision: str) -> None:
    """Migrate the database to the latest schema."""
    url = get_settings().database_url
    upgrade(url, revision)
    click.echo("database is at head")


@users_cli.command("create")
@click.argument("email")
@click.option("--role", type=click.Choice(["admin", "member"]), default="member", show_default=True)
@click.option("--name", "display_name", default="")
@click.option(
    "--password",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="Prompted (hidden) when not given; prefer the prompt so it stays out of shell history.",
)
@with_appcontext
def users_create(email: str, role: str, display_name: str, password: str) -> None:
    """Create a user with a password."""
    db = get_database().session()
    try:
        user = users.create_user(
            db,
            get_settings(),
            email=email,
            password=password,
            role=role,
            display_name=display_name,
            verified=True,
        )
        audit.record(
            db,
            audit.AuditContext(actor="cli"),
            "user.create",
            target=f"user:{user.id}",
            details={"email": user.email, "role": role, "via": "cli"},
        )
        db.commit()
    except AppError as exc:
        db.rollback()
        detail = "; ".join(f"{k}: {v}" for k, v in exc.fields.items()) or exc.help
        raise click.ClickException(f"{exc.text} {detail}") from None
    click.echo(f"created {role} {user.email} (id {user.id})")


@users_cli.command("invite")
@click.argument("email")
@click.option("--role", type=click.Choice(["admin", "member"]), default="member", show_default=True)
@click.option("--name", "display_name", default="")
@with_appcontext
def users_invite(email: str, role: str, display_name: str) -> None:
    """Create a user and mail them a link (7 days) to choose their password."""
    db = get_database().session()
    try:
        created = user_admin.create_user(
            db,
            get_settings(),
            audit.AuditContext(actor="cli"),
            email=email,
            display_name=display_name,
            role=role,
            metadata="",
            mode="invite",
        )
    except AppError as exc:
        db.rollback()
        detail = "; ".join(f"{k}: {v}" for k, v in exc.fields.items()) or exc.help
        raise click.ClickException(f"{exc.text} {detail}") from None
    if created.mail_error is not None:
        raise click.ClickException(
            f"created {created.user.email} (id {created.user.id}), but the invitation was not sent: "
            f"{created.mail_error.text} {created.mail_error.help}"
        )
    click.echo(f"invited {role} {created.user.email} (id {created.user.id}); the link in the mail works for 7 days")


@users_cli.command("identities")
@click.argument("email")
@with_appcontext
def users_identities(email: str) -> None:
    """List the sign-in identities (Google, GitHub, Entra ID, OpenID) linked to a user."""
    db = get_database().session()
    user = users.get_by_email(db, email)
    if user is None:
        raise click.ClickException(f"no user with email {email!r}")
    found = linked_identities.list_identities(db, user.id)
    if not found:
        click.echo(f"{user.email} has no linked identity")
    for identity in found:
        state = "" if identity.usable else "  (its provider config cannot sign in now)"
        where = f"{identity.provider_name} / {identity.provider_config}"
        click.echo(f"{identity.id}\t{where}\t{identity.email or '-'}{state}")


@users_cli.command("unlink")
@click.argument("email")
@click.argument("identity_id", type=click.IntRange(1))
@with_appcontext
def users_unlink(email: str, identity_id: int) -> None:
    """Unlink a sign-in identity from a user (never their last way to sign in); audited."""
    db = get_database().session()
    user = users.get_by_email(db, email)
    if user is None:
        raise click.ClickException(f"no user with email {email!r}")
    try:
        identity = linked_identities.unlink(db, audit.AuditContext(actor="cli"), user, identity_id, via="cli")
        db.commit()
    except AppError as exc:
        db.rollback()
        raise click.ClickException(f"{exc.text} {exc.help}") from None
    click.echo(f"unlinked {identity.provider_name} identity {identity.id} ({identity.email or '-'}) from {user.email}")


@mail_cli.command("test")
@click.argument("to")
@with_appcontext
def mail_test(to: str) -> None:
    """Send a test mail through the configured mailer (system SMTP account, AMI_AUTH_SMTP_URL or outbox)."""
    settings = get_settings()
    mailer = Mailer(get_database().session(), settings)
    try:
        transport = mailer.transport()
        mailer.send(
            users.validate_email(to),
            "AMI Auth test mail",
            f"This is a test mail from AMI Auth at {settings.base_url}. The mailer works.\n",
        )
    except AppError as exc:
        detail = "; ".join(f"{k}: {v}" for k, v in exc.fields.items()) or exc.help
        raise click.ClickException(f"{exc.code}: {exc.text} {detail}") from None
    where = "the outbox (no SMTP configured)" if transport == "outbox" else f"{transport.host}:{transport.port}"
    click.echo(f"test mail to {to} sent via {where}")


@click.command("bootstrap")
@with_appcontext
def bootstrap() -> None:
    """Create the first admin from AMI_AUTH_BOOTSTRAP_ADMIN_*, or print a one-time setup link."""
    settings = get_settings()
    db = get_database().session()
    if users.admin_count(db) > 0:
        click.echo("an admin exists; sign in at " + settings.base_url + "/signin")
        return
    if settings.bootstrap_admin_email and settings.bootstrap_admin_password:
        try:
            user = users.create_user(
                db,
                settings,
                email=settings.bootstrap_admin_email,
                password=settings.bootstrap_admin_password,
                role="admin",
                verified=True,
            )
        except AppError as exc:
            db.rollback()
            detail = "; ".join(f"{k}: {v}" for k, v in exc.fields.items())
            raise click.ClickException(f"AMI_AUTH_BOOTSTRAP_ADMIN_*: {exc.text} {detail}") from None
        audit.record(
            db,
            audit.AuditContext(actor="cli"),
            "setup.first_admin",
            target=f"user:{user.id}",
            details={"email": user.email, "via": "environment"},
        )
        db.commit()
        click.echo(f"created admin {user.email} from AMI_AUTH_BOOTSTRAP_ADMIN_EMAIL")
        return
    raw = mail_tokens.issue_token(db, "setup")
    audit.record(db, audit.AuditContext(actor="cli"), "setup.link_issued")
    db.commit()
    click.echo("No admin exists yet. Open this one-time link (valid for 1 hour) to create the first admin:")
    click.echo(f"  {settings.base_url}/setup/{raw}")


@click.command("check-config")
@with_appcontext
def check_config() -> None:
    """Validate the configuration and the database; exit non-zero with one line per problem."""
    problems = preflight(current_app._get_current_object())  # type: ignore[attr-defined]
    settings = get_settings()
    if problems:
        for problem in problems:
            click.echo(f"problem: {problem}", err=True)
        sys.exit(1)
    click.echo(
        f"configuration ok ({settings.env}, {len(settings.master_keys)} master key(s), "
        f"active {settings.active_key.kid})"
    )


def app_commands() -> list[click.Command]:
    """Every `ami-auth` command of the app (the groups carry their subcommands)."""
    # `ami-auth tokens refresh` (connected accounts' OAuth tokens) joins the API's `tokens` group.
    tokens_cli.add_command(refresh_command)
    return [
        db_cli,
        users_cli,
        mail_cli,
        bootstrap,
        check_config,
        keys_cli,
        audit_cli,
        mfa_cli,
        tokens_cli,
        compliance_cli,
        providers_cli,
        accounts_cli,
        jobs_cli,
        oidc_cli,
        webhooks_cli,
        backup_command,
        restore_command,
    ]


def register_commands(app: Flask) -> None:
    """The commands on ``app.cli``, for `flask --app wsgi …`."""
    for command in app_commands():
        app.cli.add_command(command)


def _create_app() -> Flask:
    try:
        return create_app()
    except SettingsError as exc:
        click.echo(f"ami-auth: {exc}", err=True)
        sys.exit(2)


class ServiceUnavailable(click.ClickException):
    exit_code = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure, try again later


class AmiGroup(FlaskGroup):
    """`ami-auth`: the app's commands sit on the group itself, so listing them (``--help``) and finding one by
    name never build the app. Flask's group builds it for both, and building it in development writes the
    generated keys into ./instance of whatever directory the command was typed in. Here the app (settings,
    keys, database) is made only when a command that uses it runs (``with_appcontext``, which every
    ``AppGroup`` command has)."""

    def _app_commands(self) -> None:
        if not getattr(self, "_ami_commands", False):
            for command in app_commands():
                self.add_command(command)
            self._ami_commands = True

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        self._app_commands()
        return click.Group.get_command(self, ctx, name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._app_commands()
        return click.Group.list_commands(self, ctx)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            fault = faults.classify(exc)
            if fault is None:
                raise
            # One line instead of a traceback (app.faults), with an exit status scripts can retry on.
            raise ServiceUnavailable(f"{fault.summary}. Try again in {fault.retry_after} seconds.") from None


cli = AmiGroup(
    create_app=_create_app,
    add_default_commands=True,
    add_version_option=False,
    help="AMI Auth administration.",
)


def main() -> None:
    cli.main(prog_name="ami-auth")
