"""The language a page comes in: the user's choice, else the browser's Accept-Language, else English."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient

from app.connectors.smtp_login import blame
from app.errors import N_, AppError


def test_a_page_follows_accept_language_and_falls_back_to_english(client: FlaskClient) -> None:
    german = client.get("/signin", headers={"Accept-Language": "de-DE,de;q=0.9,en;q=0.5"})
    assert '<html lang="de">' in german.get_data(as_text=True)
    french = client.get("/signin", headers={"Accept-Language": "fr-CH, fr;q=0.9"})
    assert '<html lang="fr">' in french.get_data(as_text=True)
    unknown = client.get("/signin", headers={"Accept-Language": "ja"})
    assert '<html lang="en">' in unknown.get_data(as_text=True)


def test_the_smtp_field_to_blame_is_found_whatever_language_the_reader_has(app: Flask) -> None:
    refused = AppError("invalid_credentials", N_("The mail server requires a login (%(exc)s).", exc="530 5.7.0"))
    sender = AppError("invalid_config", N_("The mail server refused the sender address (%(exc)s).", exc="550"))
    with app.test_request_context("/", headers={"Accept-Language": "de"}):
        assert "requires a login" not in refused.text  # shown in German
        assert list(blame(refused, {}).fields) == ["username"]
        assert list(blame(sender, {}).fields) == ["from_address"]
