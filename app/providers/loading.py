"""Reading catalog files: YAML, the JSON Schema check, and the one error every catalog problem raises
(file, JSON path and reason, printed on one line at start-up)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from app.settings import SettingsError

PACKAGE_DIR = Path(__file__).resolve().parent
SCHEMA_PATH = PACKAGE_DIR / "catalog.schema.json"
ROOT = PACKAGE_DIR.parent.parent


class CatalogError(SettingsError):
    """An invalid catalog entry. A SettingsError so the CLI prints it as one line instead of a traceback."""

    def __init__(self, file: Path | str, path: str, reason: str) -> None:
        self.file = str(file)
        self.json_path = path
        self.reason = reason
        super().__init__(display(file), f"{path}: {reason}")


def display(file: Path | str) -> str:
    path = Path(file)
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


@cache
def load_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return schema


def read_yaml(file: Path) -> Any:
    try:
        return yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise CatalogError(file, "$", f"not valid YAML{where}: {problem}") from None


def schema_check(file: Path, data: Any, definition: str | None = None) -> None:
    """Check ``data`` against the catalog schema (or one of its ``$defs``); the best error, with its path."""
    schema = load_schema()
    if definition is not None:
        schema = {"$defs": schema["$defs"], "$ref": f"#/$defs/{definition}"}
    error = best_match(Draft202012Validator(schema).iter_errors(data))
    if error is not None:
        raise CatalogError(file, error.json_path, error.message)
