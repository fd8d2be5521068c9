"""Prometheus metrics: every metric AMI Auth exports is named once, here.

Counting happens in three places, so the feature modules stay free of counters:

* **Audit events** (:func:`count_audit_event`, called by :func:`app.audit.record`): every stored event is
  counted by action and outcome, and the events operators alert on feed named counters too — sign-ins by
  method and outcome, lockouts, wrong second factors. An event is counted when its transaction commits: a
  rolled-back event did not happen, and is not counted.
* **One request hook** (``app.web.observability``): every HTTP request by route template, method and status,
  with a latency histogram; 429s and 5xx are the ``status`` label.
* **One line where nothing is audited**: a token refresh (``app.jobs.refresh``), a mail send
  (``app.mailer``), a 503 for a fault (``app.web.errors``).

Adding a metric for a later feature is one line here and one call where it happens::

    WEBHOOK_DELIVERIES = counter("webhook_deliveries", "Webhook deliveries by event and outcome.", "event", "outcome")
    ...
    metrics.WEBHOOK_DELIVERIES.labels(event="account.connected", outcome="delivered").inc()

(docs/operations.md lists the ones planned.) Label values must come from a small, fixed set (a route
template, a provider type, an outcome): never a user, an email, a URL or an id — each distinct value is a
time series for as long as the process lives.

**Several processes.** gunicorn runs several workers, each with its own counters. With
``PROMETHEUS_MULTIPROC_DIR`` set (``gunicorn.conf.py`` sets it and clears it at start), ``prometheus_client``
keeps each process's values in a memory-mapped file there and :func:`exposition` adds them all up, whichever
worker answers the scrape; ``gunicorn.conf.py``'s ``child_exit`` hook tells it when a worker is gone. The
variable must be set before this module is imported: the library picks its storage at import time.
Without it (the development server, tests, the CLI) the counters are this process's own.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import multiprocess as _multiprocess
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

__all__ = [
    "AUDIT_EVENTS",
    "CONTENT_TYPE",
    "FAULTS",
    "HTTP_REQUESTS",
    "HTTP_REQUEST_DURATION",
    "LOCKOUTS",
    "MAIL_SENDS",
    "MFA_FAILURES",
    "MULTIPROCESS_DIR_VARIABLE",
    "NAMESPACE",
    "SIGNINS",
    "TOKEN_REFRESHES",
    "count_audit_event",
    "counter",
    "exposition",
    "label",
    "preset",
]

NAMESPACE: Final = "ami_auth"
MULTIPROCESS_DIR_VARIABLE: Final = "PROMETHEUS_MULTIPROC_DIR"
# The classic text format (what generate_latest writes for our names), understood by every Prometheus version.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

# Seconds. Most pages answer in milliseconds; a password check (argon2id) takes tens to hundreds of them, and a
# call out to a provider up to the outbound timeout (10 s by default).
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def counter(name: str, documentation: str, *labels: str) -> Counter:
    """A counter ``ami_auth_<name>_total`` with these labels: the one line a feature adds."""
    return Counter(name, documentation, labels, namespace=NAMESPACE)


# --- what is counted --------------------------------------------------------------------------------------------

AUDIT_EVENTS: Final = counter("audit_events", "Audit events stored, by action and outcome.", "action", "outcome")
SIGNINS: Final = counter(
    "signins",
    "Completed sign-in attempts by method (password, password+totp, webauthn, oauth, ...) and outcome.",
    "method",
    "outcome",
)
LOCKOUTS: Final = counter(
    "lockouts", "Accounts locked by the sign-in throttle, by the layer that locked them.", "layer"
)
MFA_FAILURES: Final = counter("mfa_failures", "Wrong second factors at sign-in, by method.", "method")
TOKEN_REFRESHES: Final = counter(
    "token_refreshes",
    "OAuth token refreshes of connected accounts, by provider type and outcome.",
    "provider_type",
    "outcome",
)
MAIL_SENDS: Final = counter(
    "mail_sends", "Mails the app sent, by transport (smtp, outbox) and outcome.", "transport", "outcome"
)
FAULTS: Final = counter(
    "faults", "Requests answered 503 because a service the app needs failed, by service.", "service"
)
OIDC_GRANTS: Final = counter(
    "oidc_grants", "Tokens the OpenID Provider issued, by grant type (refreshes included).", "grant_type"
)
PROXY_CALLS: Final = counter(
    "proxy_calls",
    "Calls through the credential-injecting proxy, by upstream status class (2xx, 4xx, 5xx, none) and outcome.",
    "status",
    "outcome",
)
WEBHOOK_DELIVERIES: Final = counter(
    "webhook_deliveries",
    "Webhook delivery tries, by what became of the delivery (delivered, retrying, failed for good).",
    "outcome",
)
HTTP_REQUESTS: Final = counter(
    "http_requests", "HTTP requests by route template, method and status code.", "route", "method", "status"
)
HTTP_REQUEST_DURATION: Final = Histogram(
    "http_request_duration_seconds",
    "Time from the request reaching the app to its response, by route template and method.",
    ("route", "method"),
    namespace=NAMESPACE,
    buckets=LATENCY_BUCKETS,
)

# Label values that do not come from code are clipped to this shape (a provider may answer anything).
_LABEL_SAFE: Final = re.compile(r"[^A-Za-z0-9_.:+/<>-]")
_LABEL_MAX: Final = 64


def label(value: object, default: str = "unknown") -> str:
    """A label value of bounded shape and length (``default`` for None or empty)."""
    text = _LABEL_SAFE.sub("_", str(value))[:_LABEL_MAX] if value is not None else ""
    return text or default


def preset(metric: Counter, **values: Iterable[str]) -> None:
    """Create every combination of these label values at 0, so a dashboard and an alert see a series (and its
    rate of 0) before the first event, instead of no data."""
    names = list(values)
    for combination in itertools.product(*(tuple(values[name]) for name in names)):
        metric.labels(**dict(zip(names, combination, strict=True)))


# --- from audit events ------------------------------------------------------------------------------------------


def _signin_method(details: Mapping[str, object]) -> str:
    methods = details.get("methods")
    if isinstance(methods, list) and methods:
        return label("+".join(str(m) for m in methods))
    return label(details.get("method"))


def _signin(outcome: str) -> Callable[[str, Mapping[str, object]], None]:
    return lambda _outcome, details: SIGNINS.labels(method=_signin_method(details), outcome=outcome).inc()


def _status_class(value: object) -> str:
    return f"{value // 100}xx" if isinstance(value, int) and 100 <= value <= 599 else "none"


# action -> what else it counts. A sign-in that stops at "second factor pending" is neither a success nor a
# failure yet; its end (signin.success, or mfa.failure / signin.failure) is counted.
_DERIVED: Final[dict[str, Callable[[str, Mapping[str, object]], None]]] = {
    "signin.success": _signin("success"),
    "signin.failure": _signin("failure"),
    "account.locked": lambda _outcome, details: LOCKOUTS.labels(layer=label(details.get("layer"))).inc(),
    "mfa.failure": lambda _outcome, details: MFA_FAILURES.labels(method=label(details.get("method"))).inc(),
    "account.proxy": lambda outcome, details: PROXY_CALLS.labels(
        status=_status_class(details.get("status")), outcome=label(outcome)
    ).inc(),
}


_PENDING: Final = "ami_metrics_pending"


def count_audit_event(session: Session, action: str, outcome: str, details: Mapping[str, object]) -> None:
    """Count an audit event when ``session``'s transaction commits (``app.audit.record`` calls this)."""
    session.info.setdefault(_PENDING, []).append((action, outcome, details))


def count_committed_event(action: str, outcome: str, details: Mapping[str, object]) -> None:
    """Count an audit event that is committed (written outside a Session: ``app.audit_batch``)."""
    AUDIT_EVENTS.labels(action=action, outcome=outcome).inc()
    derived = _DERIVED.get(action)
    if derived is not None:
        derived(outcome, details)


@event.listens_for(Session, "after_commit")
def _count_committed(session: Session) -> None:
    for action, outcome, details in session.info.pop(_PENDING, ()):
        count_committed_event(action, outcome, details)


@event.listens_for(Session, "after_transaction_end")
def _forget_uncommitted(session: Session, transaction: SessionTransaction) -> None:
    # Fired after after_commit, and alone on a rollback or a close: what was not committed is dropped.
    if transaction.parent is None:
        session.info.pop(_PENDING, None)


# --- exposition -------------------------------------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROCESS_DIR_VARIABLE) or None


def exposition() -> bytes:
    """The Prometheus text format of every metric: summed over all worker processes in multiprocess mode."""
    if multiprocess_dir() is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def mark_process_dead(pid: int) -> None:
    """gunicorn's ``child_exit`` hook: a dead worker's live-gauge files go (its counters stay counted)."""
    if multiprocess_dir() is not None:
        _multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
