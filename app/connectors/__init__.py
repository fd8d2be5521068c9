"""Connectors: header generation for API-key providers, connectivity tests, the SMTP mailer."""

from __future__ import annotations

from flask import Flask


def system_mailer_configured(app: Flask) -> bool:
    """Whether an admin marked an SMTP account as the system mailer (the SMTP connector fills this in)."""
    return False
