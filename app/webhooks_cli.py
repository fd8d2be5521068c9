"""`ami-auth webhooks …`: register endpoints, rotate their signing secrets, read the delivery log, redeliver,
and run the delivery job once (for cron; the in-app scheduler runs it too).

A signing secret is printed once, when it is made (``add``, ``rotate-secret``); nothing prints it again.
"""

from __future__ import annotations

from datetime import timedelta

import click
from flask.cli import AppGroup, with_appcontext

from app.audit import AuditContext
from app.errors import AppError
from app.extensions import get_cipher, get_database, get_settings
from app.jobs.webhooks import deliver_due, delivery_client, purge_finished
from app.services import webhooks
from app.webhook_events import EVENT_TYPES

webhooks_cli = AppGroup("webhooks", help="Signed webhooks: endpoints, secrets, delivery log, redeliver, deliver.")

CLI_ACTOR = AuditContext(actor="cli")
_EVENT_CHOICE = click.Choice([t.name for t in EVENT_TYPES])


def _fail(exc: AppError) -> click.ClickException:
    detail = "; ".join(f"{name}: {message}" for name, message in exc.fields.items()) or exc.help
    return click.ClickException(f"{exc.text} {detail}")


@webhooks_cli.command("events")
def events_command() -> None:
    """The event types an endpoint can subscribe to."""
    for event in EVENT_TYPES:
        click.echo(f"{event.name:<26} {event.description}")


@webhooks_cli.command("list")
@with_appcontext
def list_command() -> None:
    """One line per endpoint."""
    db = get_database().session()
    rows = webhooks.list_endpoints(db)
    if not rows:
        click.echo("no webhook endpoints; add one with `ami-auth webhooks add URL --event …`")
        return
    for endpoint in rows:
        state = "enabled" if endpoint.enabled else "disabled"
        pending = webhooks.pending_count(db, endpoint)
        click.echo(f"{endpoint.id:>4}  {state:<8} pending={pending:<4} {endpoint.url}  [{', '.join(endpoint.events)}]")


@webhooks_cli.command("add")
@click.argument("url")
@click.option("--event", "events", multiple=True, type=_EVENT_CHOICE, required=True, help="Repeat for each type.")
@click.option("--description", default="", help="What receives them (shown in the console).")
@click.option("--disabled", is_flag=True, help="Register it without sending yet.")
@with_appcontext
def add_command(url: str, events: tuple[str, ...], description: str, disabled: bool) -> None:
    """Register an endpoint; prints its signing secret once."""
    db = get_database().session()
    try:
        made = webhooks.create_endpoint(
            db,
            get_settings(),
            get_cipher(),
            CLI_ACTOR,
            url=url,
            events=events,
            description=description,
            enabled=not disabled,
        )
        db.commit()
    except AppError as exc:
        db.rollback()
        raise _fail(exc) from None
    click.echo(f"endpoint {made.endpoint.id} registered")
    click.echo(f"signing secret (shown once; give it to the receiver): {made.value}")


@webhooks_cli.command("update")
@click.argument("endpoint_id", type=int)
@click.option("--url", default=None)
@click.option("--event", "events", multiple=True, type=_EVENT_CHOICE, help="Replaces the list; repeat for each.")
@click.option("--description", default=None)
@click.option("--enable/--disable", "enabled", default=None)
@with_appcontext
def update_command(
    endpoint_id: int, url: str | None, events: tuple[str, ...], description: str | None, enabled: bool | None
) -> None:
    """Change an endpoint's URL, events, description or enabled state."""
    db = get_database().session()
    try:
        endpoint = webhooks.get_endpoint(db, endpoint_id)
        changed = webhooks.update_endpoint(
            db,
            get_settings(),
            CLI_ACTOR,
            endpoint,
            url=url,
            events=events or None,
            description=description,
            enabled=enabled,
        )
        db.commit()
    except AppError as exc:
        db.rollback()
        raise _fail(exc) from None
    click.echo(f"endpoint {endpoint_id}: " + (f"changed {', '.join(changed)}" if changed else "nothing to change"))


@webhooks_cli.command("rotate-secret")
@click.argument("endpoint_id", type=int)
@click.option(
    "--overlap-hours",
    type=click.IntRange(0, 168),
    default=24,
    show_default=True,
    help="How long the old secret keeps signing too (0: stop at once).",
)
@with_appcontext
def rotate_command(endpoint_id: int, overlap_hours: int) -> None:
    """Make a new signing secret; prints it once."""
    db = get_database().session()
    try:
        endpoint = webhooks.get_endpoint(db, endpoint_id)
        made = webhooks.rotate_secret(db, get_cipher(), CLI_ACTOR, endpoint, overlap=timedelta(hours=overlap_hours))
        db.commit()
    except AppError as exc:
        db.rollback()
        raise _fail(exc) from None
    click.echo(f"new signing secret (shown once): {made.value}")
    if overlap_hours:
        click.echo(f"the old secret signs too for {overlap_hours} h: switch the receiver within that time")


@webhooks_cli.command("remove")
@click.argument("endpoint_id", type=int)
@with_appcontext
def remove_command(endpoint_id: int) -> None:
    """Delete an endpoint, its secrets and its delivery log."""
    db = get_database().session()
    try:
        webhooks.delete_endpoint(db, CLI_ACTOR, webhooks.get_endpoint(db, endpoint_id))
        db.commit()
    except AppError as exc:
        db.rollback()
        raise _fail(exc) from None
    click.echo(f"endpoint {endpoint_id} removed")


@webhooks_cli.command("log")
@click.argument("endpoint_id", type=int)
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@with_appcontext
def log_command(endpoint_id: int, limit: int) -> None:
    """The newest deliveries of an endpoint with each try's response code."""
    db = get_database().session()
    try:
        views = webhooks.deliveries(db, webhooks.get_endpoint(db, endpoint_id), limit=limit)
    except AppError as exc:
        raise _fail(exc) from None
    for view in views:
        d = view.delivery
        tries = " ".join(str(a.status) if a.status is not None else "-" for a in view.attempts) or "none yet"
        click.echo(f"{d.id:>6}  {view.event.type:<26} {view.event.public_id}  {d.state:<9} tries: {tries}")


@webhooks_cli.command("redeliver")
@click.argument("endpoint_id", type=int)
@click.argument("delivery_id", type=int)
@with_appcontext
def redeliver_command(endpoint_id: int, delivery_id: int) -> None:
    """Queue a delivery again (same event id, a fresh retry schedule)."""
    db = get_database().session()
    try:
        delivery = webhooks.get_delivery(db, webhooks.get_endpoint(db, endpoint_id), delivery_id)
        webhooks.redeliver(db, CLI_ACTOR, delivery)
        db.commit()
    except AppError as exc:
        db.rollback()
        raise _fail(exc) from None
    click.echo(f"delivery {delivery_id} queued again")


@webhooks_cli.command("deliver")
@click.option("--limit", type=click.IntRange(min=1), default=500, show_default=True, help="Tries at most.")
@with_appcontext
def deliver_command(limit: int) -> None:
    """Send the due deliveries once (safe beside the scheduler and other runs)."""
    client = delivery_client(get_settings())
    try:
        report = deliver_due(get_database().session(), client, get_cipher(), limit=limit)
    finally:
        client.close()
    click.echo(f"webhooks: {report.summary()}")


@webhooks_cli.command("purge")
@click.option(
    "--older-than-days",
    type=click.IntRange(min=1),
    default=None,
    help="Age in days (default: AMI_AUTH_WEBHOOK_RETENTION_DAYS).",
)
@with_appcontext
def purge_command(older_than_days: int | None) -> None:
    """Delete finished events (every delivery delivered or given up) and their delivery log; pending ones stay."""
    days = older_than_days or get_settings().webhook_retention_days
    db = get_database().session()
    try:
        count = purge_finished(db, timedelta(days=days))
    finally:
        db.close()
    click.echo(f"webhooks: {count} finished event(s) older than {days} day(s) deleted")
