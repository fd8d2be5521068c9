"""Render every failure in the taxonomy: JSON for the API, a page for browsers; never a traceback."""

from __future__ import annotations

import json
import logging
import secrets

from flask import Flask, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.wrappers import Response

from app.errors import AppError, ErrorCode
from app.web.common import wants_json
from app.web.csrf import log_refusal, refusal_reason

log = logging.getLogger("ami_auth.errors")

HTTP_CODES: dict[int, ErrorCode] = {
    400: "validation_failed",
    401: "not_authenticated",
    403: "permission_denied",
    404: "not_found",
    405: "not_found",
    409: "conflict",
    413: "validation_failed",
    415: "validation_failed",
    429: "rate_limited",
}


def render_app_error(exc: AppError, reference: str | None = None) -> Response:
    status = exc.http_status
    if wants_json():
        response = Response(json.dumps(exc.to_dict(reference)), status=status, mimetype="application/json")
    else:
        html = render_template("error.html", error=exc, reference=reference)
        response = Response(html, status=status, mimetype="text/html")
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(AppError)
    def _app_error(exc: AppError) -> Response:
        if exc.code == "secret_unreadable":
            log.warning("secret unreadable: %s", exc.text)
        return render_app_error(exc)

    @app.errorhandler(CSRFError)
    def _csrf(exc: CSRFError) -> Response:
        log_refusal(refusal_reason(exc))
        return render_app_error(
            AppError(
                "validation_failed",
                "The form expired or did not come from this site.",
                "Reload the page and submit it again.",
                status=400,
            )
        )

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        code = HTTP_CODES.get(exc.code or 500, "internal_error")
        status = exc.code or 500
        message = exc.description if code == "validation_failed" and status == 413 else None
        if isinstance(exc, MethodNotAllowed):
            message = f"{request.method} is not allowed here."
        response = render_app_error(AppError(code, message, status=status))
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            # RFC 9110 section 15.5.6: a 405 response must list the allowed methods.
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        reference = secrets.token_hex(6)
        log.exception("unexpected error, reference %s", reference)
        return render_app_error(AppError("internal_error"), reference=reference)
