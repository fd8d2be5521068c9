"""Branding (``AMI_AUTH_BRAND_*``): the product name every page shows, the logo at ``/brand/logo`` and the accent
colour as a small stylesheet at ``/brand.css`` — a stylesheet, not an inline style, so the CSP (style-src 'self')
stays as strict as it is."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort
from werkzeug.wrappers import Response

from app.auth.mails import ink_for
from app.extensions import get_settings

bp = Blueprint("branding", __name__)


@bp.app_context_processor
def _brand() -> dict[str, Any]:
    settings = get_settings()
    return {
        "brand_name": settings.brand_name,
        "brand_logo": settings.brand_logo is not None,
        "brand_css": settings.brand_accent is not None,
    }


@bp.get("/brand.css")
def stylesheet() -> Response:
    accent = get_settings().brand_accent
    if accent is None:
        abort(404)
    css = f":root {{ --accent: {accent}; --accent-ink: {ink_for(accent)}; --accent-soft: {accent}1f; }}\n"
    response = Response(css, mimetype="text/css")
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@bp.get("/brand/logo")
def logo() -> Response:
    path = get_settings().brand_logo
    if path is None:
        abort(404)
    # A small file, read whole: no open file handle outlives the request.
    mimetype = "image/svg+xml" if path.suffix.lower() == ".svg" else "image/png"
    response = Response(path.read_bytes(), mimetype=mimetype)
    response.headers["Cache-Control"] = "public, max-age=300"
    return response
