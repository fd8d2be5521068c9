"""The versioning and deprecation policy of docs/api.md, as a client sees it: an operation on its way out says so
on every answer (RFC 9745 ``Deprecation``, RFC 8594 ``Sunset``, a ``Link`` to its successor) and in the document."""

from __future__ import annotations

from datetime import date

from flask import Flask
from werkzeug.wrappers import Response

from app.api.registry import Deprecation, document
from app.api.security import api_blueprint, api_public, json_response


def _old_endpoint(app: Flask) -> None:
    bp = api_blueprint("api_test_deprecated", __name__)

    @bp.get("/test/old-thing")
    @api_public
    @document(
        operation_id="getOldThing",
        summary="An operation on its way out",
        response={"type": "object", "additionalProperties": True},
        deprecation=Deprecation(since=date(2026, 12, 1), sunset=date(2027, 6, 1), successor="/docs/api.md#new-thing"),
    )
    def old_thing() -> Response:
        return json_response({"ok": True})

    app.register_blueprint(bp)


def test_a_deprecated_operation_says_so_on_every_answer_and_in_the_document(app: Flask) -> None:
    _old_endpoint(app)
    client = app.test_client()
    for response in (client.get("/api/test/old-thing"), client.get("/api/test/old-thing?unknown=1")):
        assert response.headers["Deprecation"] == "@1796083200"  # 2026-12-01T00:00:00Z
        assert response.headers["Sunset"] == "Tue, 01 Jun 2027 00:00:00 GMT"
        assert response.headers["Link"] == '</docs/api.md#new-thing>; rel="successor-version"'
    operation = client.get("/api/openapi.json").get_json()["paths"]["/api/test/old-thing"]["get"]
    assert operation["deprecated"] is True
    assert set(operation["responses"]["200"]["headers"]) >= {"Deprecation", "Sunset", "Link"}
    # Operations that are not deprecated carry none of it.
    current = client.get("/api/openapi.json")
    assert "Deprecation" not in current.headers and "Sunset" not in current.headers
