"""The JSON API for the CMS: ``/api/...``. Answers are JSON only, errors in the taxonomy shape
(``app/web/errors.py`` renders every AppError under /api as JSON).

Access: an admin session for now; service tokens arrive with the CMS issue.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from app.api.schema import catalog_schema
from app.providers.registry import get_catalog
from app.web.common import admin_required

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.get("/account-manager/providers/schema")
@admin_required
def providers_schema() -> Response:
    """One JSON Schema per provider type (config and account), built from the catalog the forms use."""
    return jsonify(catalog_schema(get_catalog()))
