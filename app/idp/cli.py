"""`ami-auth oidc …`: the OpenID Provider's signing keys, its clients, and the back-channel logout outbox.

Exit codes: 0 done; 1 refused (the reason is printed, naming the field for bad client settings).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext

from app.audit import AuditContext
from app.errors import AppError
from app.extensions import get_cipher, get_database, get_settings
from app.idp import clients, keys, tokens
from app.idp.clients_apply import ApplyError, apply_file
from app.idp.logout import deliver_due, purge_done
from app.net import get_client

oidc_cli = AppGroup("oidc", help="The OpenID Provider: signing keys, clients, back-channel logout.")
keys_cli = AppGroup("keys", help="Signing keys: list, rotate, retire.")
clients_cli = AppGroup("clients", help="Relying parties: create, list, show, apply, delete.")
logout_cli = AppGroup("logout", help="Back-channel logout deliveries.")
oidc_cli.add_command(keys_cli)
oidc_cli.add_command(clients_cli)
oidc_cli.add_command(logout_cli)

CLI_ACTOR = AuditContext(actor="cli")


def _fail(exc: AppError) -> click.ClickException:
    detail = "; ".join(f"{name}: {message}" for name, message in exc.fields.items()) or exc.help
    return click.ClickException(f"{exc.text} {detail}")


def _when(value: Any) -> str:
    return f"{value:%Y-%m-%d %H:%M} UTC" if value is not None else "-"


# --- keys ----------------------------------------------------------------------------------------------------------


@keys_cli.command("list")
@with_appcontext
def keys_list() -> None:
    """Every signing key: algorithm, state, and until when tokens it signed verify."""
    db = get_database().session()
    created = keys.ensure_keys(db, get_cipher(), CLI_ACTOR)
    db.commit()
    if created:
        click.echo(f"generated {len(created)} key(s): {', '.join(created)}")
    click.echo(f"{'KID':<44} {'ALG':<6} {'STATE':<9} {'CREATED':<21} VERIFIES UNTIL")
    for row in keys.list_keys(db):
        until = keys.verifies_until(row)
        shown = "-" if row.state in ("current", "next") else _when(row.retired_at if row.state == "retired" else until)
        click.echo(f"{row.kid:<44} {row.alg:<6} {row.state:<9} {_when(row.created_at):<21} {shown}")


@keys_cli.command("rotate")
@click.option("--alg", type=click.Choice([*keys.ALGORITHMS, "all"]), default="all", show_default=True)
@with_appcontext
def keys_rotate(alg: str) -> None:
    """The next key starts signing, the current one stays published until its tokens expire, a new next key is
    published."""
    db = get_database().session()
    try:
        done = [keys.rotate(db, get_cipher(), CLI_ACTOR, a) for a in (keys.ALGORITHMS if alg == "all" else (alg,))]
        db.commit()
    except AppError as exc:
        db.rollback()
        raise _fail(exc) from None
    for rotation in done:
        click.echo(f"{rotation.alg}: current {rotation.current}, next {rotation.next}, previous {rotation.previous}")
        if rotation.retired:
            click.echo(f"{rotation.alg}: retired {', '.join(rotation.retired)} (every token they signed had expired)")


# A kid is a JWK thumbprint in base64url and may begin with "-": taken as the argument, not as an unknown option.
@keys_cli.command("retire", context_settings={"ignore_unknown_options": True})
@click.argument("kid")
@click.option("--force", is_flag=True, help="Retire before the tokens it signed expire (a compromised key).")
@with_appcontext
def keys_retire(kid: str, force: bool) -> None:
    """Stop publishing a previous key."""
    db = get_database().session()
    try:
        keys.retire(db, CLI_ACTOR, kid, force=force)
        db.commit()
    except AppError as exc:
        db.rollback()
        raise _fail(exc) from None
    click.echo(f"retired {kid}")


# --- clients -------------------------------------------------------------------------------------------------------


def _show(client: Any) -> None:
    settings = clients.settings_of(client)
    click.echo(f"{client.name}")
    click.echo(f"  client_id: {client.client_id}")
    for name in clients.FIELDS:
        if name == "name":
            continue
        value = getattr(settings, name)
        shown = " ".join(value) if isinstance(value, tuple) else ("-" if value is None else value)
        click.echo(f"  {name}: {shown}")
    click.echo(f"  secret: {'set (stored hashed)' if client.secret_hash else '-'}")


@clients_cli.command("create")
@click.argument("name")
@click.option(
    "--type", "client_type", type=click.Choice(clients.CLIENT_TYPES), default="confidential", show_default=True
)
@click.option("--auth-method", type=click.Choice([*clients.CONFIDENTIAL_METHODS, "none"]))
@click.option("--redirect-uri", "redirect_uris", multiple=True, help="Repeat for several (exact match).")
@click.option("--post-logout-uri", "post_logout_redirect_uris", multiple=True)
@click.option("--backchannel-logout-uri")
@click.option("--jwks-uri", help="For private_key_jwt: where the client publishes its public keys.")
@click.option("--grant-type", "grant_types", multiple=True, type=click.Choice(clients.GRANT_TYPES))
@click.option("--scope", "scopes", multiple=True, help="Allowed scopes (default: openid profile email).")
@click.option("--audience", "audiences", multiple=True, help="The APIs its access tokens are for (aud).")
@click.option("--first-party", is_flag=True, help="A platform app: no consent page.")
@click.option("--no-pkce", is_flag=True, help="Confidential clients only: do not require PKCE.")
@click.option("--id-token-alg", type=click.Choice(keys.ALGORITHMS))
@click.option("--access-token-ttl", type=int)
@click.option("--refresh-token-ttl", type=int)
@click.option("--id-token-ttl", type=int)
@with_appcontext
def clients_create(name: str, client_type: str, no_pkce: bool, **options: Any) -> None:
    """Register a relying party; prints its client_id, and its secret once."""
    values: dict[str, Any] = {"name": name, "client_type": client_type, "require_pkce": not no_pkce}
    for key, value in options.items():
        if value is None or value == () or value is False:
            continue
        values[key] = list(value) if isinstance(value, tuple) else value
    db = get_database().session()
    try:
        saved = clients.create_client(db, CLI_ACTOR, values, production=get_settings().is_production)
        db.commit()
    except AppError as exc:
        db.rollback()
        raise _fail(exc) from None
    _show(saved.client)
    if saved.secret:
        click.echo(f"\nclient_secret: {saved.secret}")
        click.echo("Store it now: it is shown only this once (AMI Auth keeps only its hash).")


@clients_cli.command("list")
@with_appcontext
def clients_list() -> None:
    rows = clients.list_clients(get_database().session())
    if not rows:
        click.echo("no clients; register one with `ami-auth oidc clients create NAME --redirect-uri …`")
        return
    click.echo(f"{'CLIENT ID':<26} {'TYPE':<13} {'AUTH':<20} {'1ST':<4} {'ON':<4} NAME")
    for row in rows:
        first = "yes" if row.first_party else "no"
        enabled = "yes" if row.enabled else "no"
        click.echo(
            f"{row.client_id:<26} {row.client_type:<13} {row.auth_method:<20} {first:<4} {enabled:<4} {row.name}"
        )


# Client ids minted before they were letters and digits only may begin with "-" (see keys retire).
@clients_cli.command("show", context_settings={"ignore_unknown_options": True})
@click.argument("ref", metavar="CLIENT_ID")
@with_appcontext
def clients_show(ref: str) -> None:
    """Settings of one client (by client id or name); never its secret."""
    try:
        _show(clients.get_client(get_database().session(), ref))
    except AppError as exc:
        raise _fail(exc) from None


@clients_cli.command("delete", context_settings={"ignore_unknown_options": True})
@click.argument("ref", metavar="CLIENT_ID")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_appcontext
def clients_delete(ref: str, yes: bool) -> None:
    """Delete a client with its tokens and consents (its users are signed out of it at the next refresh)."""
    db = get_database().session()
    try:
        client = clients.get_client(db, ref)
        if not yes:
            click.confirm(f"Delete {client.name} ({client.client_id}) and every token issued to it?", abort=True)
        clients.delete_client(db, CLI_ACTOR, client)
        db.commit()
    except AppError as exc:
        db.rollback()
        raise _fail(exc) from None
    click.echo(f"deleted {client.name} ({client.client_id})")


@clients_cli.command("apply")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Print the changes; write nothing.")
@with_appcontext
def clients_apply(file: Path, dry_run: bool) -> None:
    """Create or update clients from FILE (matched by name); prints a new client's secret once."""
    db = get_database().session()
    try:
        plans = apply_file(db, CLI_ACTOR, file, production=get_settings().is_production, dry_run=dry_run)
        if not dry_run:
            db.commit()
    except ApplyError as exc:
        db.rollback()
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        click.echo("nothing was written", err=True)
        sys.exit(1)
    for plan in plans:
        for line in plan.describe():
            click.echo(line)
        if plan.saved is not None and plan.existing is None:
            click.echo(f"  client_id: {plan.saved.client.client_id}")
        if plan.saved is not None and plan.saved.secret:
            click.echo(f"  client_secret: {plan.saved.secret}  (shown only this once)")
    if dry_run:
        click.echo("dry run: nothing was written")
    else:
        counts = {a: sum(1 for p in plans if p.action == a) for a in ("create", "update", "unchanged")}
        click.echo(f"applied: {counts['create']} created, {counts['update']} updated, {counts['unchanged']} unchanged")


# --- logout ------------------------------------------------------------------------------------------------------


@logout_cli.command("deliver")
@with_appcontext
def logout_deliver() -> None:
    """Send the back-channel logouts that are due now (for deployments that run without the in-app scheduler)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    settings = get_settings()
    keyring = keys.KeyRing(get_database().engine, get_cipher())
    run = deliver_due(get_database().engine, keyring, settings.base_url, get_client(app))
    taken = f", taken over by another worker {run.taken_over}" if run.taken_over else ""
    click.echo(f"delivered {run.delivered}, retrying {run.retrying}, failed {run.failed}{taken}")
    if run.next_due is not None:
        click.echo(f"next due {_when(run.next_due)}")


@oidc_cli.command("purge")
@with_appcontext
def purge() -> None:
    """Delete codes and tokens expired over a day ago, and logout deliveries done over 30 days ago."""
    db = get_database().session()
    count = tokens.purge_expired(db) + purge_done(db)
    db.commit()
    click.echo(f"purged {count} row(s)")
