"""Field groups: the fields several catalog entries share (sign-in policy, device flow, rotation reminder),
declared once in ``app/providers/field_groups.yaml`` and included by name.

An entry writes ``- include: sign_in_policy`` among its fields, optionally with ``override: {field: {key:
value}}`` for what differs (a help text, a default). :func:`expand` replaces each include with the group's
fields in place, so positions, ``order`` and everything the forms, the schema API and validation see are
the same as if the fields were written out; the JSON Schema checks the file before and after.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from app.providers.loading import CatalogError, read_yaml, schema_check
from app.providers.types import FIELD_SETS

GROUPS_PATH = Path(__file__).resolve().parent / "field_groups.yaml"
# The field a rotation policy is edited in; its default is the entry's own `rotation_days`, stated once.
ROTATION_FIELD = "rotation_days"

Groups = Mapping[str, tuple[Mapping[str, Any], ...]]


@cache
def load_groups() -> Groups:
    """The groups file, checked against ``$defs/field_groups`` of the catalog schema."""
    data = read_yaml(GROUPS_PATH)
    schema_check(GROUPS_PATH, data, "field_groups")
    return {name: tuple(fields) for name, fields in data["groups"].items()}


def expand(file: Path, data: Mapping[str, Any], groups: Groups | None = None) -> dict[str, Any]:
    """``data`` with every include replaced by its group's fields (a new mapping; ``data`` is not changed)."""
    groups = load_groups() if groups is None else groups
    expanded = dict(data)
    for which in FIELD_SETS:
        key = f"{which}_fields"
        fields: list[Any] = []
        for i, item in enumerate(data.get(key) or []):
            if not (isinstance(item, dict) and "include" in item):
                fields.append(item)
                continue
            path = f"$.{key}[{i}]"
            name = item["include"]
            if name not in groups:
                known = ", ".join(sorted(groups))
                raise CatalogError(file, f"{path}.include", f"no field group {name!r} in field_groups.yaml ({known})")
            members = [copy.deepcopy(dict(member)) for member in groups[name]]
            by_name = {member["name"]: member for member in members}
            for target, changes in (item.get("override") or {}).items():
                if target not in by_name:
                    raise CatalogError(file, f"{path}.override.{target}", f"group {name!r} has no field {target!r}")
                by_name[target].update(copy.deepcopy(changes))
            for member in members:
                if member["name"] == ROTATION_FIELD and "default" not in member and ROTATION_FIELD in data:
                    member["default"] = data[ROTATION_FIELD]
            fields.extend(members)
        if key in data:
            expanded[key] = fields
    return expanded
