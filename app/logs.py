"""Logs: one JSON object per line (``python-json-logger``), the app's and gunicorn's alike.

Every line has ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``pid`` and ``message``; a line written while
a request is served also has that request's ``request_id`` (the ``X-Request-ID`` the response carries, see
``app.web.observability``). The request's own line adds ``method``, ``route`` (the route *template*, e.g.
``/reset/<token>``: a URL can carry a token, a template cannot), ``status``, ``duration_ms`` and ``user_id`` /
``token_id``. A sample::

    {"time": "2026-01-05T10:12:03.114527+00:00", "level": "INFO", "logger": "ami_auth.request", "pid": 4242,
     "message": "POST /signin 303", "request_id": "5f0c…", "method": "POST", "route": "/signin", "status": 303,
     "duration_ms": 87.4, "user_id": 7}

What never reaches a line: a password, a second factor, a token, a key, a cookie or a session id. Log calls
name things (an id, an email, a taxonomy code), never values; the request line logs the route template, not the
URL; gunicorn's access log, which only knows the URL, goes nowhere (:func:`gunicorn_logconfig`). The production-shaped
suite checks it: it runs the journeys and searches every line for every secret they used.

The handler goes on the root logger, so libraries' warnings are JSON too. Under gunicorn, ``gunicorn.conf.py``
installs it (as :data:`HANDLER_NAME`) for gunicorn's own loggers as well, and :func:`configure_logging` then
leaves it alone.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from flask import g, has_request_context
from pythonjsonlogger.json import JsonFormatter

__all__ = ["HANDLER_NAME", "RequestContext", "configure_logging", "gunicorn_logconfig", "json_formatter"]

HANDLER_NAME: Final = "ami_auth_json"
_FIELDS: Final = "%(levelname)s %(name)s %(process)d %(message)s"
_RENAMED: Final = {"levelname": "level", "name": "logger", "process": "pid"}


def json_formatter() -> JsonFormatter:
    """``{"time", "level", "logger", "pid", "message", …extra fields}`` on one line."""
    return JsonFormatter(_FIELDS, rename_fields=_RENAMED, timestamp="time")


class RequestContext(logging.Filter):
    """Adds the current request's id to every record written while it is served (on any logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if has_request_context() and not hasattr(record, "request_id"):
            request_id = g.get("request_id")
            if request_id is not None:
                record.request_id = request_id
        return True


def json_handler() -> logging.Handler:
    handler = logging.StreamHandler()
    handler.name = HANDLER_NAME
    handler.setFormatter(json_formatter())
    handler.addFilter(RequestContext())
    return handler


def configure_logging(level: str) -> None:
    """JSON lines on stderr from the root logger (unless gunicorn's logconfig already put them there); the
    app's own loggers (``ami_auth.*``) at ``level``."""
    root = logging.getLogger()
    if not any(h.name == HANDLER_NAME for h in root.handlers):
        root.addHandler(json_handler())  # the root logger's own level (WARNING) keeps libraries' INFO out
    logging.getLogger("ami_auth").setLevel(level)


def gunicorn_logconfig(level: str = "INFO") -> dict[str, Any]:
    """gunicorn's ``logconfig_dict``: its error log as JSON lines on stderr, through the same handler the app
    uses. Its access log goes nowhere: gunicorn logs it whenever a logconfig is given, and it can only log the URL,
    which may carry a one-time token (``/reset/<token>``); the app's own request line replaces it."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "app.logs.json_formatter"}},
        "filters": {"request": {"()": "app.logs.RequestContext"}},
        "handlers": {
            HANDLER_NAME: {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "filters": ["request"],
                "stream": "ext://sys.stderr",
            },
            "nowhere": {"class": "logging.NullHandler"},
        },
        "root": {"level": "WARNING", "handlers": [HANDLER_NAME]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO", "handlers": ["nowhere"], "propagate": False},
        },
    }
