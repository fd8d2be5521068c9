"""The language a page comes in: the user's choice, else the browser's Accept-Language, else English."""

from __future__ import annotations

from flask.testing import FlaskClient


def test_a_page_follows_accept_language_and_falls_back_to_english(client: FlaskClient) -> None:
    german = client.get("/signin", headers={"Accept-Language": "de-DE,de;q=0.9,en;q=0.5"})
    assert '<html lang="de">' in german.get_data(as_text=True)
    french = client.get("/signin", headers={"Accept-Language": "fr-CH, fr;q=0.9"})
    assert '<html lang="fr">' in french.get_data(as_text=True)
    unknown = client.get("/signin", headers={"Accept-Language": "ja"})
    assert '<html lang="en">' in unknown.get_data(as_text=True)
