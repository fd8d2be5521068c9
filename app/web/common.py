"""Helpers every page blueprint shares: guards, safe redirects, form errors. Who is asking (the signed-in
session, the audit context) is :mod:`app.http.context`, shared with the JSON API."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

from flask import redirect, request, url_for
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response

from app.errors import N_, AppError
from app.http.context import signed_in

P = ParamSpec("P")
R = TypeVar("R")


def safe_next(target: str | None, default: str = "/") -> str:
    """Only same-origin paths: '/x' yes; '//evil', '/\\evil', 'https://evil' and control characters no."""
    if not target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith(("//", "/\\")):
        return default
    if any(ord(c) < 32 for c in target) or "\\" in target:
        return default
    return target


def landing(is_admin: bool, next_url: str) -> str:
    """Where a completed sign-in goes: ``next`` when one was asked for, else straight to the user's own start page
    (one redirect, not a second hop through ``/``)."""
    if next_url != url_for("web.home"):
        return next_url
    return url_for("admin.index" if is_admin else "account.index")


def field_ids(form: Any) -> list[str]:
    """The ids of a form's fields as rendered (what an error summary may link to with ``#id``)."""
    return [str(f.id) for f in form]


def wants_json() -> bool:
    if request.path.startswith("/api/"):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return (
        best == "application/json"
        and request.accept_mimetypes["application/json"] > request.accept_mimetypes["text/html"]
    )


def _to_signin() -> Response:
    return redirect(url_for("auth.signin", next=request.full_path.rstrip("?")))


def login_required(view: Callable[P, R]) -> Callable[P, R | Response]:
    @wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | Response:
        if signed_in() is None:
            if wants_json():
                raise AppError("not_authenticated")
            return _to_signin()
        return view(*args, **kwargs)

    return wrapper


def admin_required(view: Callable[P, R]) -> Callable[P, R | Response]:
    @wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | Response:
        who = signed_in()
        if who is None:
            if wants_json():
                raise AppError("not_authenticated")
            return _to_signin()
        if not who.is_admin:
            raise AppError("permission_denied", N_("This page is for administrators."))
        return view(*args, **kwargs)

    return wrapper


def keep_on_form(db: Session, exc: AppError, form: Any) -> None:
    """Roll back a failed form action: a field-level failure goes on the form, anything else to the error page."""
    db.rollback()
    if not exc.fields:
        raise exc
    form_errors(exc, form)


def form_errors(exc: AppError, form: Any) -> None:
    """Put an AppError's per-field messages on the matching WTForms fields (the rest go to the form)."""
    for name, message in exc.field_texts.items():
        field = getattr(form, name, None)
        if field is not None and hasattr(field, "errors"):
            field.errors = [*list(field.errors), message]
