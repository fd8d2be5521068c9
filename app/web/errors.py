"""Render every failure in the taxonomy: JSON for the API, a page for browsers; never a traceback."""

from __future__ import annotations

import json
import logging
import secrets
from typing import Final

from flask import Flask, g, render_template, request
from flask_wtf.csrf import CSRFError
from markupsafe import escape
from werkzeug.exceptions import HTTPException, InternalServerError, MethodNotAllowed
from werkzeug.wrappers import Response

from app import faults, metrics
from app.errors import N_, AppError, ErrorCode
from app.extensions import login_manager
from app.http.context import signed_in
from app.http.csrf import log_refusal, refusal_reason
from app.web.common import wants_json
from app.web.observability import request_id

log = logging.getLogger("ami_auth.errors")

HTTP_CODES: dict[int, ErrorCode] = {
    400: "validation_failed",
    401: "not_authenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "validation_failed",
    415: "validation_failed",
    429: "rate_limited",
}


# Failures whose text is for whoever runs the service (a provider's settings, outbound rules, DNS, a key that
# cannot be read): an end user or member gets "not available right now" and a reference instead.
DIAGNOSTIC_CODES: Final = frozenset({"invalid_config", "provider_unreachable", "secret_unreadable"})
UNAVAILABLE_MESSAGE: Final = N_("This is not available right now.")
UNAVAILABLE_HINT: Final = N_(
    "Try again later, or sign in another way. If it keeps happening, tell an administrator and quote the reference."
)


def viewer_error(exc: AppError) -> tuple[AppError, str | None]:
    """What the person looking gets for a diagnostic failure: an admin the detail, anyone else a plain "not
    available right now"; both with a reference (the request id) that meets the log line carrying the detail.
    Any other failure is shown as it is, without a reference."""
    if exc.code not in DIAGNOSTIC_CODES:
        return exc, None
    reference = request_id() or secrets.token_hex(6)
    who = signed_in()
    if who is not None and who.is_admin:
        log.info("shown to an admin (reference %s): %s: %s", reference, exc.code, exc.text)
        return exc, reference
    log.warning("not available (reference %s): %s: %s %s", reference, exc.code, exc.text, exc.help)
    return (
        AppError("service_unavailable", UNAVAILABLE_MESSAGE, UNAVAILABLE_HINT, retry_after=faults.RETRY_OUTAGE),
        reference,
    )


def render_app_error(exc: AppError, reference: str | None = None) -> Response:
    if wants_json():
        response = Response(json.dumps(exc.to_dict(reference)), status=exc.http_status, mimetype="application/json")
    else:
        if exc.code == "service_unavailable" and "_login_user" not in g:
            # The page's header would load the signed-in user from the database that just failed; a fault
            # page shows no account, so it renders without one more wait on a locked or absent database.
            g._login_user = login_manager.anonymous_user()
        try:
            html = render_template("error.html", error=exc, reference=reference)
        except Exception as render_error:
            # The layout itself hit a fault (the signed-in user's session is read from the database): answer
            # the fault, on a page that needs nothing but this string.
            fault = faults.classify(render_error)
            if fault is None:
                raise
            _log_fault(fault, render_error)
            exc, reference = fault.error(), None
            html = _bare_page(exc)
        response = Response(html, status=exc.http_status, mimetype="text/html")
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _bare_page(exc: AppError) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>AMI Auth</title></head><body>'
        f'<main data-error-code="{exc.code}"><h1>{escape(exc.text)}</h1><p>{escape(exc.help)}</p></main>'
        "</body></html>"
    )


def _log_fault(fault: faults.Fault, exc: BaseException) -> None:
    metrics.FAULTS.labels(service=fault.service).inc()
    # The driver's first line names the failure (and at most a host and port); never the statement or its values.
    detail = str(getattr(exc, "orig", None) or getattr(exc, "storage_error", None) or exc).splitlines()
    log.warning(
        "503 on %s %s: %s (%s: %s)",
        request.method,
        request.path,
        fault.summary,
        type(exc).__name__,
        detail[0][:200] if detail else "",
    )


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(AppError)
    def _app_error(exc: AppError) -> Response:
        if exc.code == "secret_unreadable":
            log.warning("secret unreadable: %s", exc.text)
        if wants_json():
            return render_app_error(exc)  # API clients are services: they get the taxonomy as it is
        return render_app_error(*viewer_error(exc))

    @app.errorhandler(CSRFError)
    def _csrf(exc: CSRFError) -> Response:
        log_refusal(refusal_reason(exc))
        return render_app_error(
            AppError(
                "validation_failed",
                N_("The form expired or did not come from this site."),
                N_("Reload the page and submit it again."),
                status=400,
            )
        )

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        if isinstance(exc, InternalServerError) and exc.original_exception is not None:
            # Flask wraps what escaped an error handler or an after_request hook: the same rules as below.
            return _unexpected(exc.original_exception)
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
    def _unexpected(exc: BaseException) -> Response:
        # A database or Redis outage is not a bug: 503 service_unavailable with Retry-After (app.faults).
        fault = faults.classify(exc)
        if fault is not None:
            _log_fault(fault, exc)
            return render_app_error(fault.error())
        reference = request_id() or secrets.token_hex(6)  # the X-Request-ID: the user's report meets our log line
        log.error("unexpected error, reference %s", reference, exc_info=exc)
        return render_app_error(AppError("internal_error"), reference=reference)
