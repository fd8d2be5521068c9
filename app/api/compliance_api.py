"""``GET /api/compliance/report``: the compliance snapshot (same data as the console page and the CLI)."""

from __future__ import annotations

from typing import Final

from werkzeug.wrappers import Response

from app.api.account_snapshots import REASONS, STATUSES
from app.api.compliance import build_report, report_json
from app.api.registry import DATETIME, JSONSchema, component, document, nullable
from app.api.security import api_auth, api_blueprint, json_response
from app.extensions import db_session, get_settings

bp = api_blueprint("api_compliance", __name__)


def _object(properties: dict[str, JSONSchema]) -> JSONSchema:
    return {"type": "object", "required": list(properties), "additionalProperties": False, "properties": properties}


_INT: Final[JSONSchema] = {"type": "integer"}
_STR: Final[JSONSchema] = {"type": "string"}
_ACCOUNT: Final[dict[str, JSONSchema]] = {
    "account_id": _INT,
    "provider_type": _STR,
    "provider_config": _STR,
    "label": _STR,
    "user_id": nullable(_INT),
}

REPORT = component(
    "ComplianceReport",
    _object(
        {
            "generated_at": DATETIME,
            "findings": {"type": "integer", "minimum": 0, "description": "Items that need attention; 0 is clean."},
            "mfa": _object(
                {
                    "required_roles": {"type": "array", "items": _STR},
                    "coverage": {
                        "type": "array",
                        "items": _object(
                            {
                                "role": _STR,
                                "users": _INT,
                                "enrolled": _INT,
                                "percent": {"type": "number", "minimum": 0, "maximum": 100},
                                "required": {"type": "boolean"},
                            }
                        ),
                    },
                    "violations": {
                        "type": "array",
                        "items": _object({"user_id": _INT, "email": _STR, "role": _STR}),
                    },
                }
            ),
            "secrets_past_rotation": {
                "type": "array",
                "items": _object({**_ACCOUNT, "rotated_at": nullable(DATETIME), "age_days": _INT, "policy_days": _INT}),
            },
            "accounts_failing": {
                "type": "array",
                "items": _object(
                    {
                        **_ACCOUNT,
                        "status": {
                            "type": "string",
                            "enum": list(STATUSES),
                            "description": "The account's status as GET /api/account-manager/accounts gives it.",
                        },
                        "status_reason": {"type": "string", "enum": list(REASONS)},
                        "last_error": _object({"code": _STR, "hint": _STR, "at": nullable(DATETIME)}),
                        "attempts": _INT,
                    }
                ),
            },
            "service_tokens_unused": _object(
                {
                    "days": _INT,
                    "tokens": {
                        "type": "array",
                        "items": _object(
                            {
                                "id": _INT,
                                "name": _STR,
                                "prefix": _STR,
                                "created_at": DATETIME,
                                "last_used_at": nullable(DATETIME),
                            }
                        ),
                    },
                }
            ),
            "audit_chain": _object(
                {
                    "ok": {"type": "boolean"},
                    "checked": _INT,
                    "first_bad_id": nullable(_INT),
                    "problem": _STR,
                    "head_hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                }
            ),
        }
    ),
)


@bp.get("/compliance/report")
@api_auth("compliance:read")
@document(
    operation_id="getComplianceReport",
    summary="Compliance report",
    description=(
        "MFA coverage per role and users violating AMI_AUTH_MFA_REQUIRED_ROLES, account secrets past their "
        "rotation policy, accounts failing refresh, service tokens unused for 90 days, and the audit-chain "
        "verification. Scope `compliance:read` (admins with the session cookie)."
    ),
    response=REPORT,
    tags=("compliance",),
)
def report() -> Response:
    return json_response(report_json(build_report(db_session(), get_settings())))
