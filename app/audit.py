# Placeholder until the audit branch merges (same API); replaced wholesale by app/audit.py from that branch.
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AuditContext:
    actor: str = "system"
    actor_id: int | None = None
    ip: str = ""
    user_agent: str = ""


def record(session: Any, ctx: AuditContext, action: str, **kw: Any) -> None:
    return None


def query(session: Any, **kw: Any) -> list[Any]:
    return []
