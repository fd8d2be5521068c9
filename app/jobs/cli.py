"""`ami-auth tokens …`: the OAuth token refresh, for cron or by hand (safe beside the in-app scheduler)."""

from __future__ import annotations

from datetime import timedelta

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext

from app.extensions import get_database, get_settings

tokens_cli = AppGroup("tokens", help="Connected OAuth accounts' tokens.")


@tokens_cli.command("refresh")
@click.option("--margin", type=click.IntRange(min=0), default=None, help="Minutes ahead of expiry (default: setting).")
@click.option("--workers", type=click.IntRange(1, 64), default=4, show_default=True, help="Parallel refreshes.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Handle at most this many accounts.")
@with_appcontext
def tokens_refresh(margin: int | None, workers: int, limit: int | None) -> None:
    """Refresh every connected account whose access token expires within the margin.

    Any number of these may run at once (and beside the in-app scheduler): each account is claimed
    before it is refreshed, so none is refreshed twice.
    """
    from app.jobs.refresh import run_refresh
    from app.oauth.glue import runtime

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    minutes = margin if margin is not None else get_settings().token_refresh_margin_minutes
    report = run_refresh(
        runtime(app), get_database(app).engine, margin=timedelta(minutes=minutes), workers=workers, limit=limit
    )
    click.echo(f"token refresh: {report.summary()}")
