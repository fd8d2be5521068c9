"""Error texts are marked where they are raised and read in the viewer's language where they are shown."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

from flask import Flask

from app import create_app
from app.auth.throttle import Throttled
from app.errors import N_, AppError, translated
from app.i18n import force_locale
from tests.conftest import dispose_app, make_settings


def test_a_marked_text_is_its_english_until_shown() -> None:
    text = N_("Use at least %(num)s characters.", num=12)
    assert text == "Use at least 12 characters."
    assert translated(text) == "Use at least 12 characters."  # no app: English, as the CLI prints it
    error = AppError("validation_failed", fields={"password": text})
    assert error.field_texts == {"password": "Use at least 12 characters."}
    assert copy.deepcopy(text) == text and pickle.loads(pickle.dumps(text)).values == {"num": 12}


def test_an_error_reads_in_the_language_of_the_request(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, f"sqlite:///{tmp_path}/unused.db"))
    error = Throttled("ip", 120, N_("Too many sign-in attempts from your network."))
    try:
        _read_in_each_language(app, error)
    finally:
        dispose_app(app)


def _read_in_each_language(app: Flask, error: AppError) -> None:
    with app.test_request_context("/", headers={"Accept-Language": "de"}):
        assert error.text == "Zu viele Anmeldeversuche aus Ihrem Netzwerk."
        assert error.help == "Versuchen Sie es in 2 Minuten erneut."
        assert AppError("not_found").to_dict()["error"]["message"] == "Nicht gefunden."
        with force_locale("fr"):
            assert error.help == "Réessayez dans 2 minutes."
    with app.test_request_context("/"):
        assert error.help == "Try again in 2 minutes."
