"""``ami-auth audit …``: check the hash chain and export the log for archiving."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
from flask.cli import AppGroup
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit import count_after, export_jsonl, verify
from app.extensions import get_database
from app.models.audit import AuditEvent

audit_cli = AppGroup("audit", help="Check and export the hash-chained audit log.")

_TAIL_CHUNK = 64 * 1024


def _events(n: int) -> str:
    return f"{n} event" if n == 1 else f"{n} events"


@audit_cli.command("verify")
@click.option(
    "--batch", default=1000, show_default=True, type=click.IntRange(1, 100_000), help="Events read per query."
)
def verify_command(batch: int) -> None:
    """Walk the chain; exit 1 naming the first edited, deleted, inserted or reordered event.

    Keep the printed head hash outside the database: the chain alone cannot show that its newest
    events were removed, a head hash from an earlier run can.
    """
    result = verify(get_database().session(), batch=batch)
    if result.ok:
        click.echo(f"OK: checked {_events(result.checked)}; head hash {result.head_hash}")
        return
    click.echo(f"TAMPERED: {result.problem}", err=True)
    click.echo(f"checked {_events(result.checked)}; intact up to head hash {result.head_hash}")
    raise click.exceptions.Exit(1)


def _last_complete_line(path: Path) -> tuple[bytes | None, int]:
    """The last newline-terminated line of ``path`` and the byte offset just after it.

    Reads backwards in chunks, so resuming a multi-gigabyte export does not read all of it.
    """
    with path.open("rb") as raw:
        pos = raw.seek(0, os.SEEK_END)
        buf = b""
        while pos > 0:
            step = min(_TAIL_CHUNK, pos)
            pos -= step
            raw.seek(pos)
            buf = raw.read(step) + buf
            last_nl = buf.rfind(b"\n")
            if last_nl == -1:
                continue
            prev_nl = buf.rfind(b"\n", 0, last_nl)
            if prev_nl != -1 or pos == 0:
                return buf[prev_nl + 1 : last_nl], pos + last_nl + 1
    return None, 0


def _resume_point(session: Session, path: Path) -> int:
    """The id of the last event already in ``path``, after trimming a partial last line.

    The last line's hash must match the database's event of that id; otherwise the file belongs to
    another database (or the chain changed) and appending would produce a file that verifies nowhere.
    """
    if not path.exists():
        return 0
    line, end = _last_complete_line(path)
    size = path.stat().st_size
    if end < size:
        # An interrupted write leaves half a line; it is rewritten in full below.
        with path.open("r+b") as raw:
            raw.truncate(end)
        click.echo(f"Removed an incomplete last line ({size - end} bytes) from {path}.", err=True)
    if line is None:
        return 0
    try:
        last = json.loads(line)
        last_id, last_hash = last["id"], last["hash"]
    except (ValueError, KeyError, TypeError):
        raise click.ClickException(f"{path}: the last line is not an audit export line; cannot resume") from None
    if not isinstance(last_id, int) or not isinstance(last_hash, str):
        raise click.ClickException(f"{path}: the last line is not an audit export line; cannot resume")
    stored = session.scalar(select(AuditEvent.hash).where(AuditEvent.id == last_id))
    if stored != last_hash:
        raise click.ClickException(
            f"{path} does not continue this database's audit log: event {last_id} "
            + ("is missing here" if stored is None else "has a different hash here")
        )
    return last_id


@audit_cli.command("export")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="File to write JSON lines to (default: standard output).",
)
@click.option("--resume", is_flag=True, help="Append the events after the last one already in --output.")
def export_command(output: Path | None, resume: bool) -> None:
    """Write every event (with hash and prev_hash) as one JSON line, in id order."""
    if resume and output is None:
        raise click.UsageError("--resume needs --output FILE (it continues that file).")
    session = get_database().session()
    after_id = _resume_point(session, output) if resume and output is not None else 0
    total = count_after(session, after_id)
    # The progress bar goes to stderr so that exporting to stdout yields clean JSON lines.
    with click.progressbar(length=total, label="Exporting audit events", file=sys.stderr) as bar:
        if output is None:
            written = export_jsonl(session, sys.stdout, after_id=after_id, progress=bar.update)
        else:
            with output.open("a" if resume else "w", encoding="utf-8", newline="\n") as fh:
                written = export_jsonl(session, fh, after_id=after_id, progress=bar.update)
    where = f" after event {after_id}" if after_id else ""
    click.echo(f"Exported {_events(written)}{where}.", err=True)
