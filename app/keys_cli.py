"""``keys`` commands: see which master keys hold rows, add or rotate a key, and rewrap rows onto it.

Key material is printed in exactly one place: the ``AMI_AUTH_MASTER_KEYS=`` line that ``add`` and
``rotate`` write to stdout when the keys come from the environment (so it can be piped into a secret
store). Everything else goes to stderr or names key ids only.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import click
from flask.cli import AppGroup

from app import audit
from app.extensions import get_database, get_settings
from app.settings import (
    PREFIX,
    MasterKey,
    Settings,
    SettingsError,
    dev_key_file,
    format_master_keys,
    new_master_key,
    parse_master_keys,
    save_dev_master_keys,
)
from app.vault import store
from app.vault.cipher import Cipher, SecretUnreadable

VARIABLE = PREFIX + "MASTER_KEYS"

keys_cli = AppGroup("keys", help="Master keys for the secret vault: status, add, rotate, rewrap.")


def _keys_come_from_dev_file(settings: Settings) -> bool:
    """True when the running keys were read from ``instance/master_keys`` rather than the environment."""
    # load_settings prefers the variable to the file, so a key written to the file would never load.
    if settings.is_production or os.environ.get(VARIABLE, "").strip():
        return False
    path = dev_key_file(settings.instance_dir)
    if not path.is_file():
        return False
    try:
        return parse_master_keys(path.read_text().strip(), variable=str(path)) == settings.master_keys
    except SettingsError:
        return False


def _default_kid(taken: set[str]) -> str:
    base = "k" + datetime.now(UTC).strftime("%Y%m%d")
    kid, n = base, 2
    while kid in taken:
        kid, n = f"{base}-{n}", n + 1
    return kid


def _make_key(settings: Settings, kid: str | None) -> MasterKey:
    taken = {k.kid for k in settings.master_keys}
    if kid is None:
        kid = _default_kid(taken)
    elif kid in taken:
        raise click.BadParameter(f"key id {kid!r} is already configured", param_hint="--kid")
    key = new_master_key(kid)
    try:
        # The same rules as start-up, so a key we hand out is one the app will accept.
        parse_master_keys(format_master_keys((key,)))
    except SettingsError as exc:
        raise click.BadParameter(exc.problem, param_hint="--kid") from None
    return key


def _audit(action: str, kid: str, *, ok: bool = True, **details: object) -> None:
    session = get_database().session()
    audit.record(
        session,
        audit.AuditContext(actor="cli"),
        action,
        target=f"master_key:{kid}",
        outcome="success" if ok else "failure",
        details=details,
    )
    session.commit()


def _install(settings: Settings, key: MasterKey, *, active: bool) -> None:
    keys = (key, *settings.master_keys) if active else (*settings.master_keys, key)
    role = "the active key (it encrypts new values)" if active else "a decrypt-only key (not active)"
    from_file = _keys_come_from_dev_file(settings)
    _audit("keys.rotated" if active else "keys.added", key.kid, stored="dev key file" if from_file else "printed")
    if from_file:
        path = dev_key_file(settings.instance_dir)
        save_dev_master_keys(settings.instance_dir, keys)
        click.echo(f"Added key {key.kid!r} to {path} as {role}.")
        click.echo("Restart the app to load it.")
    else:
        click.echo(f"Generated key {key.kid!r} as {role}. It is not stored anywhere yet:", err=True)
        click.echo(f"set {VARIABLE} to the line on stdout in your secret store and restart every process.", err=True)
        click.echo(f"{VARIABLE}={format_master_keys(keys)}")
    if active:
        click.echo(
            "Keep the old keys configured until `keys rewrap` has moved every row and `keys status` "
            "shows none left on them.",
            err=True,
        )


@keys_cli.command("status")
def status_command() -> None:
    """Rows per key id; which key is active; keys in rows but not configured are MISSING."""
    settings = get_settings()
    session = get_database().session()
    counts = store.key_status(session)
    configured = [k.kid for k in settings.master_keys]
    active = configured[0]
    kids = configured + sorted(set(counts) - set(configured))
    width = max(len("KEY ID"), *(len(k) for k in kids))
    click.echo(f"Active key: {active}")
    click.echo(f"{'KEY ID':<{width}}  {'ROWS':>8}  STATE")
    for kid in kids:
        if kid == active:
            state = "active"
        elif kid in configured:
            state = "configured (decrypt only)"
        else:
            state = f"MISSING: not in {VARIABLE}; these rows cannot be decrypted"
        click.echo(f"{kid:<{width}}  {counts.get(kid, 0):>8}  {state}")
    behind = sum(n for kid, n in counts.items() if kid != active)
    if behind:
        click.echo(f"{behind} row(s) are not on the active key; run `keys rewrap` to move them.")


@keys_cli.command("add")
@click.option("--kid", help="Key id (1-32 letters, digits, '-' or '_'); default k<YYYYMMDD>.")
def add_command(kid: str | None) -> None:
    """Generate a new decrypt-only key (e.g. to stage it on every node before rotating to it)."""
    settings = get_settings()
    _install(settings, _make_key(settings, kid), active=False)


@keys_cli.command("rotate")
@click.option("--kid", help="Key id (1-32 letters, digits, '-' or '_'); default k<YYYYMMDD>.")
def rotate_command(kid: str | None) -> None:
    """Generate a new key and make it the active one; older keys stay for decryption."""
    settings = get_settings()
    _install(settings, _make_key(settings, kid), active=True)


@keys_cli.command("rewrap")
@click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True)
def rewrap_command(batch_size: int) -> None:
    """Move every row onto the active key. Safe to interrupt; run it again to resume."""
    settings = get_settings()
    database = get_database()
    cipher = Cipher(settings.master_keys)
    session = database.session()
    counts = store.key_status(session)
    total = store.rewrap_pending(session, cipher)
    # rewrap() opens its own transactions on the same scoped session; end this read first.
    session.close()
    missing = sorted(set(counts) - set(cipher.key_ids))
    if missing:
        raise click.ClickException(
            f"rows use key id(s) {', '.join(missing)}, which are not in {VARIABLE}. Configure the old key "
            "again, or delete the secrets that use it, then run `keys rewrap` again."
        )
    if total == 0:
        click.echo(f"Nothing to do: every row is on the active key {cipher.active_kid!r}.")
        return
    moved = 0
    with click.progressbar(length=total, label=f"Rewrapping onto {cipher.active_kid!r}") as bar:

        def step(count: int) -> None:
            nonlocal moved
            moved += count
            bar.update(count)

        try:
            store.rewrap(database.session, cipher, batch_size=batch_size, progress=step)
        except KeyboardInterrupt:
            _audit("keys.rewrapped", cipher.active_kid, ok=False, moved=moved, stopped="interrupted")
            click.echo(
                f"\nInterrupted: {moved} row(s) moved and committed. Run `keys rewrap` again to resume.",
                err=True,
            )
            raise click.exceptions.Exit(130) from None
        except SecretUnreadable as exc:
            _audit("keys.rewrapped", cipher.active_kid, ok=False, moved=moved, stopped="unreadable row")
            where = "; ".join(getattr(exc, "__notes__", []))
            raise click.ClickException(f"{exc.text} ({where}); {moved} row(s) were moved before it.") from None
    _audit("keys.rewrapped", cipher.active_kid, moved=moved)
    click.echo(f"Moved {moved} row(s) to key {cipher.active_kid!r}.")
