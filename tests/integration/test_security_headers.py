"""Under https the session cookie is Secure and HSTS is sent; frame-ancestors follows AMI_AUTH_CMS_ORIGINS."""

from __future__ import annotations

from pathlib import Path

from app import create_app
from app.web.security import content_security_policy
from tests.conftest import csrf_token, make_settings


def test_https_sets_secure_cookie_and_hsts(tmp_path: Path, sqlite_url: str) -> None:
    settings = make_settings(tmp_path, sqlite_url, AMI_AUTH_BASE_URL="https://auth.example.com")
    app = create_app(settings)
    client = app.test_client()
    csrf_token(client, "/signin")
    response = client.post(
        "/signin", data={"email": "a@example.com", "password": "x" * 12}, base_url="https://auth.example.com"
    )
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    cookies = response.headers.getlist("Set-Cookie")
    assert cookies and all("Secure" in c and "HttpOnly" in c and "SameSite=Lax" in c for c in cookies)


def test_frame_ancestors_only_for_dialogs(tmp_path: Path, sqlite_url: str) -> None:
    settings = make_settings(tmp_path, sqlite_url, AMI_AUTH_CMS_ORIGINS="https://cms.example.com")
    assert "frame-ancestors https://cms.example.com" in content_security_policy(settings, frameable=True)
    assert "frame-ancestors 'none'" in content_security_policy(settings, frameable=False)
    assert "form-action 'self' https://cms.example.com" in content_security_policy(settings, frameable=False)
    page = create_app(settings).test_client().get("/signin")
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"
