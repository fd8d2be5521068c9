"""``/api/account-manager/provider-configs``: provider configurations for the CMS — non-secret fields only.

Reading needs the scope ``providers:read``; creating, changing, deleting and testing (``…/test``, the
connectivity check of ``ami-auth providers test``) ``providers:write`` (a CMS
that edits configs holds both). A read scope of its own keeps a CMS that only lists configs (to offer
"Add account") from holding the power to change them.

Secrets never travel through this API. A secret field in a request body is refused with
``validation_failed`` on that field (``config.client_secret``), with a hint to use a secure dialog
(``POST /api/account-manager/dialogs``, kind ``edit_provider_config``) or ``ami-auth providers apply``.
Responses say which secret fields are set and when they last changed, never a value.

The rules are the console's: values are checked by ``validate_submission`` (the one validator), stored
and audited by ``app.providers.configs``, and enabling refuses an incomplete config (``invalid_config``
naming the missing fields) exactly as the console's Enable button does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import current_app
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response

from app import audit
from app.api import bodies
from app.api import schema as field_schemas
from app.api.provider_configs_schema import (
    CONFIG_ID_PARAM,
    CONFIG_TEST,
    CREATE_REQUEST,
    DESCRIPTION_COMMON,
    PROVIDER_CONFIG,
    PROVIDER_CONFIG_LIST,
    SECRET_FIELD,
    SECRET_HINT,
    TAGS,
    UPDATE_REQUEST,
)
from app.api.registry import QueryParam, document
from app.api.schema import PROVIDER_TYPE
from app.api.security import api_audit_ctx, api_auth, api_blueprint, json_response, principal
from app.connectors.verify import connectivity_test
from app.errors import AppError
from app.extensions import db_session, end_read, get_cipher, get_settings
from app.models import ConnectedAccount, ProviderConfig
from app.net import get_client
from app.providers import configs
from app.providers.entries import ProviderEntry
from app.providers.registry import entry as catalog_entry
from app.providers.registry import get_catalog
from app.providers.validation import effective_values, validate_submission

bp = api_blueprint("api_provider_configs", __name__)


def _counts(db: Session, ids: list[int]) -> dict[int, int]:
    if not ids:
        return {}
    rows = db.execute(
        select(ConnectedAccount.provider_config_id, func.count())
        .where(ConnectedAccount.provider_config_id.in_(ids))
        .group_by(ConnectedAccount.provider_config_id)
    ).all()
    return {int(config_id): int(count) for config_id, count in rows}


def config_json(db: Session, cfg: ProviderConfig, account_count: int | None = None) -> dict[str, Any]:
    provider = configs.entry_for(cfg)
    states = configs.secret_states(db, provider, cfg)
    return {
        "id": cfg.id,
        "provider_type": cfg.provider_type,
        "auth_mode": provider.auth_mode.value,
        "name": cfg.name,
        "enabled": cfg.enabled,
        "config": {key: value for key, value in (cfg.config or {}).items() if key in _plain_names(provider)},
        "secrets": {
            name: {"set": meta is not None, "changed_at": meta.created_at.isoformat() if meta else None}
            for name, meta in states.items()
        },
        "missing": configs.missing_for_enable(db, cfg),
        "account_count": account_count if account_count is not None else configs.account_count(db, cfg),
        "created_at": cfg.created_at.isoformat(),
        "updated_at": cfg.updated_at.isoformat(),
    }


def _plain_names(provider: ProviderEntry) -> set[str]:
    return {spec.name for spec in provider.fields("config") if not spec.secret}


def _prefixed(fields: Mapping[str, str]) -> dict[str, str]:
    return {f"config.{name}": message for name, message in fields.items()}


def _config_values(provider: ProviderEntry, data: Mapping[str, Any]) -> dict[str, Any]:
    """The body's ``config`` object, with secret fields refused on their own name."""
    raw = data.get("config", {})
    if not isinstance(raw, dict):
        raise AppError("validation_failed", fields={"config": "Use an object of field values."})
    secret_names = {spec.name for spec in provider.secret_fields("config")}
    refused = {name: SECRET_FIELD for name in raw if name in secret_names}
    if refused:
        raise AppError(
            "validation_failed", "Secret fields cannot be sent through the API.", SECRET_HINT, _prefixed(refused)
        )
    values: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for name, value in raw.items():
        spec = provider.field("config", name)
        problem = field_schemas.json_problem(spec, value) if spec is not None else None
        if problem is not None:
            problems[name] = problem
        # JSON Schema counts 30.0 as an integer, and so does the API.
        values[name] = int(value) if isinstance(value, float) and value.is_integer() else value
    if problems:
        raise AppError("validation_failed", fields=_prefixed(problems))
    return values


def _validated(provider: ProviderEntry, values: Mapping[str, Any]) -> dict[str, Any]:
    """``validate_submission`` on the non-secret values. Every secret counts as set here: whether the
    config is complete is the enable rule's question, asked against what is really stored."""
    every_secret = [spec.name for spec in provider.secret_fields("config")]
    clean, errors = validate_submission(provider, "config", values, secrets_set=every_secret)
    if errors:
        raise AppError("validation_failed", fields=_prefixed(errors))
    return clean


def _name(data: Mapping[str, Any]) -> str:
    return bodies.plain_text(data.get("name"), "name", max_length=configs.NAME_MAX)


def _enabled(data: Mapping[str, Any]) -> bool | None:
    value = data.get("enabled")
    if value is None and "enabled" not in data:
        return None
    if not isinstance(value, bool):
        raise AppError("validation_failed", fields={"enabled": "Use true or false."})
    return value


def _incomplete(exc: AppError, provider: ProviderEntry) -> AppError:
    """The enable rule's ``invalid_config`` with body field names, and the way to set missing secrets."""
    secret_names = {spec.name for spec in provider.secret_fields("config")}
    hint = exc.help
    if secret_names & set(exc.fields):
        hint = f"{hint} {SECRET_HINT}"
    return AppError(exc.code, exc.text, hint, _prefixed(exc.fields), status=exc.status)


def _set_enabled(db: Session, cfg: ProviderConfig, provider: ProviderEntry, enabled: bool) -> None:
    try:
        configs.set_enabled(db, api_audit_ctx(), cfg, enabled)
    except AppError as exc:
        raise _incomplete(exc, provider) from None


def _creator_id() -> int | None:
    caller = principal()
    return caller.user.id if caller.user is not None else None


@bp.get("/account-manager/provider-configs")
@api_auth("providers:read")
@document(
    operation_id="listProviderConfigs",
    summary="List provider configs",
    description="Every provider config, by type and name, with its non-secret values, which secrets are set, "
    "what keeps it from being enabled, and how many connected accounts use it. Scope `providers:read`.",
    response=PROVIDER_CONFIG_LIST,
    query=(
        QueryParam("provider_type", PROVIDER_TYPE, "Only configs of this type."),
        QueryParam("enabled", {"type": "boolean"}, "Only enabled (true) or disabled (false) configs."),
    ),
    errors=(422,),
    tags=TAGS,
)
def list_provider_configs() -> Response:
    provider_type = bodies.query_choice("provider_type", get_catalog().ids())
    enabled = bodies.query_bool("enabled")
    db = db_session()
    query = select(ProviderConfig).order_by(ProviderConfig.provider_type, ProviderConfig.name, ProviderConfig.id)
    if provider_type is not None:
        query = query.where(ProviderConfig.provider_type == provider_type)
    if enabled is not None:
        query = query.where(ProviderConfig.enabled.is_(enabled))
    rows = list(db.scalars(query))
    counts = _counts(db, [cfg.id for cfg in rows])
    return json_response({"provider_configs": [config_json(db, cfg, counts.get(cfg.id, 0)) for cfg in rows]})


@bp.post("/account-manager/provider-configs")
@api_auth("providers:write")
@document(
    operation_id="createProviderConfig",
    summary="Create a provider config",
    description="Creates a config from non-secret values; it starts disabled unless `enabled` is true and it is "
    "complete (a type with a required secret field never is until the secret is set in a secure dialog). "
    "409 `conflict` on `name` when another config has that name. Scope `providers:write`." + DESCRIPTION_COMMON,
    status=201,
    response=PROVIDER_CONFIG,
    response_description="Created; `Location` is its URL.",
    request=CREATE_REQUEST,
    errors=(409, 422),
    tags=TAGS,
    idempotent=True,
)
def create_provider_config() -> Response:
    data = bodies.json_object(
        allowed=("provider_type", "name", "enabled", "config"), required=("provider_type", "name")
    )
    provider_type = data["provider_type"]
    if not isinstance(provider_type, str) or get_catalog().get(provider_type) is None:
        raise AppError(
            "validation_failed", fields={"provider_type": "Use a provider type id from the providers schema."}
        )
    provider = catalog_entry(provider_type)
    name = _name(data)
    enabled = _enabled(data)
    clean = _validated(provider, _config_values(provider, data))
    db = db_session()
    try:
        cfg = configs.create_config(
            db, get_cipher(), get_settings(), api_audit_ctx(), provider, name, clean, created_by=_creator_id()
        )
        if enabled:
            _set_enabled(db, cfg, provider, True)
        db.flush()
        body = config_json(db, cfg, 0)
        db.commit()
    except AppError:
        db.rollback()
        raise
    return json_response(body, 201, location=f"/api/account-manager/provider-configs/{body['id']}")


def _find(db: Session, config_id: int) -> ProviderConfig:
    cfg = db.get(ProviderConfig, config_id)
    if cfg is None:
        raise AppError("not_found", f"There is no provider config with id {config_id}.", "List them to get ids.")
    return cfg


@bp.get("/account-manager/provider-configs/<int:config_id>")
@api_auth("providers:read")
@document(
    operation_id="getProviderConfig",
    summary="One provider config",
    description="Its non-secret values, which secrets are set (never their values) and what keeps it from being "
    "enabled. Scope `providers:read`.",
    response=PROVIDER_CONFIG,
    path=CONFIG_ID_PARAM,
    errors=(404,),
    tags=TAGS,
)
def get_provider_config(config_id: int) -> Response:
    db = db_session()
    return json_response(config_json(db, _find(db, config_id)))


@bp.patch("/account-manager/provider-configs/<int:config_id>")
@api_auth("providers:write")
@document(
    operation_id="updateProviderConfig",
    summary="Change a provider config",
    description="Renames it, changes non-secret values (merged into the stored ones, then checked as a whole) "
    "and/or enables or disables it — in one transaction: when any part is refused, nothing changes. Enabling "
    "needs a complete config (`invalid_config` naming `config.<field>` for each missing or invalid value). "
    "Scope `providers:write`." + DESCRIPTION_COMMON,
    response=PROVIDER_CONFIG,
    request=UPDATE_REQUEST,
    path=CONFIG_ID_PARAM,
    errors=(404, 409, 422),
    tags=TAGS,
)
def update_provider_config(config_id: int) -> Response:
    data = bodies.json_object(allowed=("name", "enabled", "config"))
    db = db_session()
    cfg = _find(db, config_id)
    provider = catalog_entry(cfg.provider_type)
    name = _name(data) if "name" in data else cfg.name
    enabled = _enabled(data)
    changes = _config_values(provider, data)
    stored = cfg.config or {}
    known = {spec.name for spec in provider.fields("config") if not spec.secret}
    merged = {key: value for key, value in stored.items() if key in known}
    merged.update(changes)
    clean = _validated(provider, merged)
    try:
        if enabled is False:
            # Disable first, so a change that an enabled config could not take is still accepted.
            _set_enabled(db, cfg, provider, False)
        try:
            configs.update_config(db, get_cipher(), get_settings(), api_audit_ctx(), cfg, name, clean)
        except AppError as exc:
            raise _incomplete(exc, provider) if exc.code == "invalid_config" else exc from None
        if enabled:
            _set_enabled(db, cfg, provider, True)
        db.flush()
        body = config_json(db, cfg)
        db.commit()
    except AppError:
        db.rollback()
        raise
    return json_response(body)


@bp.delete("/account-manager/provider-configs/<int:config_id>")
@api_auth("providers:write")
@document(
    operation_id="deleteProviderConfig",
    summary="Delete a provider config",
    description="Deletes the config and every stored secret of it. Refused with 409 `conflict` while connected "
    "accounts use it: delete those first (DELETE /api/account-manager/accounts/{account_id} revokes them at the "
    "provider), or disable the config instead. Scope `providers:write`.",
    status=204,
    response=None,
    response_description="Deleted, with its secrets.",
    path=CONFIG_ID_PARAM,
    errors=(404, 409),
    tags=TAGS,
)
def delete_provider_config(config_id: int) -> Response:
    db = db_session()
    cfg = _find(db, config_id)
    try:
        configs.delete_config(db, api_audit_ctx(), cfg)
        db.commit()
    except AppError:
        db.rollback()
        raise
    return Response(status=204)


@bp.post("/account-manager/provider-configs/<int:config_id>/test")
@api_auth("providers:write")
@document(
    operation_id="testProviderConfig",
    summary="Test a provider config's connection",
    description="Runs the type's connectivity check with the stored values and secrets, as `ami-auth providers "
    "test` does: OIDC types (Google, Azure AD, generic) fetch discovery and the signing keys; SMTP reaches the "
    "server (EHLO, TLS, NOOP; logins are per account). API-key types and GitHub answer `unavailable` (their "
    "credentials are checked per connected account: POST …/accounts/{id}/refresh). A failure is answered 200 "
    "with `status: failed`, its code and the field to blame. Audited (`provider_config.test`). "
    "Scope `providers:write` (it makes outbound calls).",
    response=CONFIG_TEST,
    path=CONFIG_ID_PARAM,
    errors=(404,),
    tags=TAGS,
)
def test_provider_config(config_id: int) -> Response:
    db = db_session()
    cfg = _find(db, config_id)
    provider = catalog_entry(cfg.provider_type)
    secrets = configs.read_secrets(db, get_cipher(), provider, cfg)
    end_read(db)  # nothing held while the provider answers
    result = connectivity_test(
        get_settings(),
        provider,
        effective_values(provider, "config", cfg.config or {}),
        secrets,
        client=get_client(current_app),
    )
    audit.record(
        db,
        api_audit_ctx(),
        "provider_config.test",
        target=f"provider_config:{cfg.id}",
        outcome="failure" if result.status == "failed" else "untested" if result.status == "unavailable" else "success",
        details={"status": result.status, "code": result.code},
    )
    db.commit()
    learned = {str(key): str(value)[:500] for key, value in result.learned.items()}
    return json_response(
        {
            "status": result.status,
            "message": result.message,
            "code": result.code,
            "field": result.field,
            "learned": learned,
        }
    )
