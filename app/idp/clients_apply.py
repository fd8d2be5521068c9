"""Relying parties as code: `ami-auth oidc clients apply FILE.yaml` (the shape of `providers apply`).

    clients:
      - name: CMS                      # matched by name: create or update
        client_type: confidential
        auth_method: client_secret_basic
        redirect_uris: [https://cms.example.com/api/auth/callback/ami]
        post_logout_redirect_uris: [https://cms.example.com/]
        backchannel_logout_uri: https://cms.example.com/api/auth/backchannel-logout
        scopes: [openid, profile, email]
        first_party: true

Every key is a setting of :mod:`app.idp.clients` (a setting left out keeps its current value, or its default for a
new client). Secrets are never in the file: a new confidential client gets one, printed once by the command. The
whole file is validated before anything is written; each problem names the file, the client and the field, and
nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit import AuditContext
from app.errors import AppError
from app.idp import clients
from app.models import OidcClient


class ApplyError(Exception):
    """Everything wrong with the file, one line per problem; nothing was written."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class ClientPlan:
    name: str
    values: dict[str, Any]
    existing: OidcClient | None
    changed: list[str] = field(default_factory=list)
    saved: clients.Saved | None = None

    @property
    def action(self) -> Literal["create", "update", "unchanged"]:
        if self.existing is None:
            return "create"
        return "update" if self.changed else "unchanged"

    def describe(self) -> list[str]:
        if self.action == "create":
            return [f"create client {self.name!r}"]
        if self.action == "update":
            return [f"update client {self.name!r}: {', '.join(self.changed)}"]
        return [f"unchanged client {self.name!r}"]


def _load(path: Path) -> list[Any]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ApplyError([f"{path}: cannot be read ({exc.strerror or exc})"]) from None
    except yaml.YAMLError as exc:
        raise ApplyError([f"{path}: not valid YAML ({exc})"]) from None
    if not isinstance(document, dict) or not isinstance(document.get("clients"), list):
        raise ApplyError([f"{path}: expected a mapping with a `clients:` list"])
    extra = sorted(set(document) - {"clients"})
    if extra:
        raise ApplyError([f"{path}: unknown top-level key {extra[0]!r} (only `clients:`)"])
    return list(document["clients"])


def plan_file(db: Session, path: Path, *, production: bool) -> list[ClientPlan]:
    """Validate every entry against the stored clients; raises :class:`ApplyError` listing every problem."""
    problems: list[str] = []
    plans: list[ClientPlan] = []
    seen: set[str] = set()
    for index, item in enumerate(_load(path), start=1):
        where = f"{path}: client #{index}"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected a mapping of settings")
            continue
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            problems.append(f"{where}: name: This field is required.")
            continue
        name = name.strip()
        where = f"{path}: client {name!r}"
        if name in seen:
            problems.append(f"{where}: name: appears twice in the file")
            continue
        seen.add(name)
        existing = db.scalars(select(OidcClient).where(OidcClient.name == name)).first()
        try:
            if existing is None:
                clients.clean(item, production=production)
                plans.append(ClientPlan(name, dict(item), None))
            else:
                before = clients.settings_of(existing)
                after = clients.clean(item, before, production=production)
                changed = [n for n in clients.FIELDS if getattr(before, n) != getattr(after, n)]
                plans.append(ClientPlan(name, dict(item), existing, changed))
        except AppError as exc:
            for field_name, message in exc.fields.items() or {"": exc.text}.items():
                problems.append(f"{where}: {field_name}: {message}" if field_name else f"{where}: {message}")
    if problems:
        raise ApplyError(problems)
    return plans


def apply_file(
    db: Session, ctx: AuditContext, path: Path, *, production: bool, dry_run: bool = False
) -> list[ClientPlan]:
    """Plan, then (unless ``dry_run``) create and update; the caller commits. New secrets are on ``plan.saved``."""
    plans = plan_file(db, path, production=production)
    if dry_run:
        return plans
    for plan in plans:
        if plan.existing is None:
            plan.saved = clients.create_client(db, ctx, plan.values, production=production)
        elif plan.changed:
            plan.saved = clients.update_client(db, ctx, plan.existing, plan.values, production=production)
    return plans
