"""`ami-auth providers export`: every provider config as the YAML `providers apply` reads (app/providers/apply.py).

Non-secret settings are written as stored; each secret that is set becomes a reference,
``${env:AMI_PROVIDER_<NAME>_<FIELD>}``, never its value — the file can go into version control, and the values
stay in the secret store that sets those variables. Applying the file where the variables hold the current
values changes nothing (``apply --dry-run`` says "unchanged" for every config); on a fresh instance it creates
the same configs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml
from sqlalchemy.orm import Session

from app.providers import configs

ENV_PREFIX = "AMI_PROVIDER_"
_NOT_NAME = re.compile(r"[^A-Z0-9]+")


@dataclass(frozen=True)
class Export:
    text: str
    # The environment variables the file references, in the order they appear, each with what it holds.
    variables: list[tuple[str, str]]


def env_name(config_name: str, field: str, taken: set[str]) -> str:
    """``AMI_PROVIDER_<NAME>_<FIELD>`` in upper case; a numeric suffix if two configs' names read the same."""
    base = ENV_PREFIX + "_".join(p for p in (_NOT_NAME.sub("_", config_name.upper()).strip("_"), field.upper()) if p)
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def export_configs(db: Session) -> Export:
    items: list[dict[str, Any]] = []
    variables: list[tuple[str, str]] = []
    taken: set[str] = set()
    for cfg in configs.list_configs(db):
        provider = configs.entry_for(cfg)
        stored = dict(cfg.config or {})
        states = configs.secret_states(db, provider, cfg)
        values: dict[str, Any] = {}
        for spec in provider.config_fields:
            if spec.secret:
                if states.get(spec.name) is not None:
                    variable = env_name(cfg.name, spec.name, taken)
                    values[spec.name] = "${env:" + variable + "}"
                    variables.append((variable, f'{spec.name} of "{cfg.name}" ({provider.id})'))
            elif spec.name in stored:
                values[spec.name] = stored[spec.name]
        items.append({"name": cfg.name, "type": provider.id, "enabled": cfg.enabled, "config": values})
    header = [
        "# AMI Auth provider configs: `ami-auth providers apply FILE` (add --dry-run to see what it would change).",
        "# Secrets are references; set these variables from your secret store before applying:",
        *(f"#   {name}: {what}" for name, what in variables),
    ]
    if not variables:
        header.append("#   (none: no secret is set)")
    body = yaml.safe_dump({"providers": items}, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return Export("\n".join(header) + "\n" + body, variables)
