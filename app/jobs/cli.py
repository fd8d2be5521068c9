"""`ami-auth tokens refresh`: the OAuth token refresh, for cron or by hand (safe beside the in-app scheduler).

A command of the `tokens` group (app/api/cli.py owns the group and its service-token commands).
"""

from __future__ import annotations

from datetime import timedelta

import click
from flask import current_app
from flask.cli import with_appcontext

from app.extensions import get_database, get_settings


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
    from app.jobs.refresh import run_refresh
    from app.oauth.glue import runtime

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    minutes = margin if margin is not None else get_settings().token_refresh_margin_minutes
    report = run_refresh(
        runtime(app), get_database(app).engine, margin=timedelta(minutes=minutes), workers=workers, limit=limit
    )
    click.echo(f"token refresh: {report.summary()}")
