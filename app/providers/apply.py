"""Provider configs as code: `ami-auth providers apply FILE.yaml`.

    providers:
      - name: Google (staff)          # matched by name (case-insensitive): create or update
        type: google
        enabled: true                 # optional; a new config starts disabled
        config:
          client_id: 1234-abc.apps.googleusercontent.com
          client_secret: ${env:GOOGLE_CLIENT_SECRET}     # secrets are references, never values
          hosted_domain: example.com

Secret fields only take `${env:NAME}` or `${file:/absolute/path}` (any field may use them). A field left
out takes its catalog default; a secret left out keeps its stored value. The whole file is read, resolved
and validated against the catalog (and with `--test` connection-tested) before anything is written; any
problem names the file, the provider and the field, and nothing is written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from sqlalchemy.orm import Session

from app import audit
from app.errors import AppError
from app.models import ProviderConfig
from app.providers import configs
from app.providers.config_test import ConfigTest, ConnectionTest
from app.providers.entries import ProviderEntry
from app.providers.registry import get_catalog
from app.providers.validation import effective_values, missing_fields, split_secrets, validate_submission
from app.settings import Settings
from app.vault import Cipher, Secret, SecretUnreadable, get_secret

_REF = re.compile(r"^\$\{(?P<kind>env|file):(?P<target>[^}]*)\}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ITEM_KEYS = {"name", "type", "enabled", "config"}


class ApplyError(Exception):
    """Everything wrong with the file, one line per problem; nothing was written."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class SecretPlan:
    field: str
    source: str  # "${env:NAME}" / "${file:/path}" — shown instead of the value
    value: Secret
    action: Literal["set", "replace", "unchanged"]


@dataclass
class ConfigPlan:
    name: str
    provider: ProviderEntry
    existing: ProviderConfig | None
    plain: dict[str, Any]
    secrets: list[SecretPlan]
    enabled: bool | None
    field_changes: list[tuple[str, Any, Any]] = field(default_factory=list)
    test: ConnectionTest | None = None

    @property
    def enable_change(self) -> bool:
        current = self.existing.enabled if self.existing is not None else False
        return self.enabled is not None and self.enabled != current

    @property
    def action(self) -> Literal["create", "update", "unchanged"]:
        if self.existing is None:
            return "create"
        changed = self.field_changes or any(s.action != "unchanged" for s in self.secrets) or self.enable_change
        return "update" if changed else "unchanged"

    def describe(self) -> list[str]:
        """Human lines for the plan; secret values never appear, only where they come from."""
        head = f'{self.action} {self.provider.id} "{self.name}"'
        if self.existing is not None:
            head += f" (#{self.existing.id})"
        lines = [head]
        for name, old, new in self.field_changes:
            if self.existing is None:
                lines.append(f"  + {name}: {_show(new)}")
            else:
                lines.append(f"  ~ {name}: {_show(old)} → {_show(new)}")
        for secret in self.secrets:
            mark = "+" if secret.action == "set" else ("~" if secret.action == "replace" else "=")
            lines.append(f"  {mark} {secret.field}: secret, {secret.action} from {secret.source}")
        if self.enable_change:
            lines.append("  + enabled" if self.enabled else "  - enabled (disable)")
        if self.test is not None:
            lines.append(f"  test: {self.test.status}: {self.test.message}")
        return lines


def _show(value: Any) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return repr(value) if isinstance(value, str) else str(value)


def _resolve(ref: str, env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(value, problem) for one `${env:…}` / `${file:…}` reference."""
    match = _REF.match(ref)
    assert match is not None
    kind, target = match["kind"], match["target"].strip()
    if kind == "env":
        if not _ENV_NAME.match(target):
            return None, f"${{env:{target}}} is not a valid environment variable name"
        value = env.get(target)
        if value is None:
            return None, f"environment variable {target} is not set"
        if value.strip() == "":
            return None, f"environment variable {target} is empty"
        return value, None
    path = Path(target)
    if not path.is_absolute():
        return None, f"${{file:{target}}} must be an absolute path"
    try:
        value = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        return None, f"cannot read {target}: {reason}"
    if value.strip() == "":
        return None, f"{target} is empty"
    return value, None


def _read(path: Path) -> tuple[list[Any], list[str]]:
    where = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return [], [f"{where}: cannot read the file: {exc.strerror or exc}"]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        return [], [f"{where}: not valid YAML{at}: {getattr(exc, 'problem', None) or exc}"]
    if not isinstance(data, dict) or set(data) != {"providers"} or not isinstance(data["providers"], list):
        return [], [f"{where}: expected a mapping with one key, providers: a list of provider configs"]
    return data["providers"], []


def plan_apply(
    db: Session,
    cipher: Cipher,
    path: Path,
    *,
    env: Mapping[str, str] | None = None,
) -> list[ConfigPlan]:
    """Read, resolve and validate the whole file; raises ApplyError listing every problem."""
    env = os.environ if env is None else env
    items, problems = _read(path)
    plans: list[ConfigPlan] = []
    seen: set[str] = set()
    catalog = get_catalog()
    for index, item in enumerate(items):
        where = f"{path}: providers[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected a mapping with name, type and config")
            continue
        unknown = sorted(set(map(str, item)) - _ITEM_KEYS)
        if unknown:
            problems.append(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_ITEM_KEYS))})")
        name, type_name = item.get("name"), item.get("type")
        if not isinstance(name, str) or not name.strip():
            problems.append(f"{where}: name is required")
            continue
        where = f"{path}: provider {name.strip()!r}"
        if name.strip().lower() in seen:
            problems.append(f"{where}: the name appears twice in the file")
            continue
        seen.add(name.strip().lower())
        found = catalog.get(str(type_name))
        if found is None:
            problems.append(f"{where}: type {type_name!r} is not one of {', '.join(catalog.ids())}")
            continue
        provider = found
        where = f"{path}: provider {name.strip()!r} ({provider.id})"
        enabled = item.get("enabled")
        if enabled is not None and not isinstance(enabled, bool):
            problems.append(f"{where}: enabled must be true or false")
            continue
        raw_config = item.get("config") or {}
        if not isinstance(raw_config, dict):
            problems.append(f"{where}: config must be a mapping of field names to values")
            continue
        plan, item_problems = _plan_item(db, cipher, provider, name.strip(), raw_config, enabled, env, where)
        problems.extend(item_problems)
        if plan is not None:
            plans.append(plan)
    if problems:
        raise ApplyError(problems)
    return plans


def _plan_item(
    db: Session,
    cipher: Cipher,
    provider: ProviderEntry,
    name: str,
    raw_config: Mapping[Any, Any],
    enabled: bool | None,
    env: Mapping[str, str],
    where: str,
) -> tuple[ConfigPlan | None, list[str]]:
    problems: list[str] = []
    existing = configs.find_by_name(db, name)
    if existing is not None and existing.provider_type != provider.id:
        return None, [f"{where}: a config with this name exists with type {existing.provider_type}"]
    data: dict[str, Any] = {}
    sources: dict[str, str] = {}
    failed: set[str] = set()  # fields already reported: no second "required" for the same field
    for key, value in raw_config.items():
        field_name = str(key)
        spec = provider.field("config", field_name)
        is_ref = isinstance(value, str) and _REF.match(value.strip()) is not None
        if spec is not None and spec.secret and not is_ref:
            # Never echo the value: it may be a real secret pasted by mistake.
            problems.append(
                f"{where}: field {field_name}: secret fields take a reference, ${{env:NAME}} or "
                "${file:/path}, never the value itself"
            )
            failed.add(field_name)
            continue
        if is_ref:
            resolved, problem = _resolve(value.strip(), env)
            if problem is not None:
                problems.append(f"{where}: field {field_name}: {problem}")
                failed.add(field_name)
                continue
            data[field_name] = resolved
            sources[field_name] = value.strip()
        elif isinstance(value, str) and ("${env:" in value or "${file:" in value):
            problems.append(f"{where}: field {field_name}: a ${{env:…}}/${{file:…}} reference must be the whole value")
            failed.add(field_name)
        else:
            data[field_name] = value
    stored_secrets = configs.secrets_set(db, provider, existing)
    clean, errors = validate_submission(provider, "config", data, secrets_set=stored_secrets)
    for field_name, message in errors.items():
        if field_name not in failed:
            problems.append(f"{where}: field {field_name}: {message}")
    if problems:
        return None, problems
    plain, secrets = split_secrets(provider, "config", clean)
    secret_plans: list[SecretPlan] = []
    for field_name, value in secrets.items():
        action: Literal["set", "replace", "unchanged"] = "set"
        if existing is not None and field_name in stored_secrets:
            try:
                current = get_secret(db, cipher, configs.OWNER, existing.id, field_name)
            except SecretUnreadable:
                current = None  # unreadable with today's keys: replacing it is the fix
            action = "unchanged" if current is not None and current == value else "replace"
        secret_plans.append(SecretPlan(field_name, sources[field_name], value, action))
    before = dict(existing.config or {}) if existing is not None else {}
    if existing is None:
        changes = [(k, None, v) for k, v in plain.items() if v is not None]
    else:
        changes = [
            (k, before.get(k), plain.get(k)) for k in sorted(set(before) | set(plain)) if before.get(k) != plain.get(k)
        ]
    if enabled:
        missing = missing_fields(provider, "config", plain, stored_secrets | set(secrets))
        for field_name, message in missing.items():
            problems.append(f"{where}: field {field_name}: cannot enable: {message}")
    plan = ConfigPlan(name, provider, existing, plain, secret_plans, enabled, changes)
    return plan, problems


def run_tests(db: Session, cipher: Cipher, plans: list[ConfigPlan], connectivity_test: ConfigTest) -> list[str]:
    """Connection-test each planned config (new values + stored secrets); returns failures as problems."""
    problems = []
    for plan in plans:
        secrets: dict[str, Secret | None] = {}
        if plan.existing is not None:
            try:
                secrets.update(configs.read_secrets(db, cipher, plan.provider, plan.existing))
            except SecretUnreadable as exc:
                problems.append(f'provider "{plan.name}": {exc.text}')
                continue
        secrets.update({s.field: s.value for s in plan.secrets})
        values = effective_values(plan.provider, "config", plan.plain)
        plan.test = connectivity_test(plan.provider, values, secrets)
        if plan.test.status == "failed":
            field_note = f" field {plan.test.field}:" if plan.test.field else ""
            problems.append(f'provider "{plan.name}" ({plan.provider.id}):{field_note} {plan.test.message}')
    return problems


def execute(
    db: Session, cipher: Cipher, settings: Settings, ctx: audit.AuditContext, plans: list[ConfigPlan]
) -> dict[str, int]:
    """Write the plans in the caller's transaction; returns counts per action."""
    counts = {"create": 0, "update": 0, "unchanged": 0}
    for plan in plans:
        counts[plan.action] += 1
        changed_secrets = {s.field: s.value for s in plan.secrets if s.action != "unchanged"}
        if plan.existing is None:
            values = {**plan.plain, **changed_secrets}
            configs.create_config(
                db, cipher, settings, ctx, plan.provider, plan.name, values, enabled=bool(plan.enabled)
            )
            continue
        if plan.field_changes or changed_secrets:
            configs.update_config(
                db, cipher, settings, ctx, plan.existing, plan.name, {**plan.plain, **changed_secrets}
            )
        if plan.enabled is not None:
            configs.set_enabled(db, ctx, plan.existing, plan.enabled)
    return counts


def apply_file(
    db: Session,
    cipher: Cipher,
    settings: Settings,
    ctx: audit.AuditContext,
    path: Path,
    *,
    dry_run: bool = False,
    env: Mapping[str, str] | None = None,
    test: ConfigTest | None = None,
) -> tuple[list[ConfigPlan], dict[str, int] | None]:
    """Plan (and unless ``dry_run``, write and commit) a file. ApplyError → nothing written. With ``test`` (the
    connectors' connectivity test) every planned config is tested first, and any failure writes nothing."""
    plans = plan_apply(db, cipher, path, env=env)
    if test is not None:
        failures = run_tests(db, cipher, plans, test)
        if failures:
            raise ApplyError([f"{path}: {line}" for line in failures])
    if dry_run:
        return plans, None
    try:
        counts = execute(db, cipher, settings, ctx, plans)
        db.commit()
    except AppError as exc:
        db.rollback()
        detail = "; ".join(f"{k}: {v}" for k, v in exc.fields.items()) or exc.help
        raise ApplyError([f"{path}: {exc.text} {detail}"]) from None
    except Exception:
        db.rollback()
        raise
    return plans, counts
