"""Relying-party registrations: what is accepted, and each bad value refused with validation_failed on its field."""

from __future__ import annotations

from typing import Any

import pytest

from app.errors import AppError
from app.idp import clients
from app.idp.claims import ACR_MFA, ACR_SFA, amr, sid_for, wants_mfa
from app.models import OidcClient

GOOD: dict[str, Any] = {"name": "CMS", "redirect_uris": ["https://cms.example.com/api/auth/callback/ami"]}


def test_defaults_are_a_confidential_client_with_pkce_on() -> None:
    settings = clients.clean(GOOD)
    assert settings.client_type == "confidential" and settings.auth_method == "client_secret_basic"
    assert settings.require_pkce is True and settings.first_party is False
    assert settings.grant_types == ("authorization_code", "refresh_token")
    assert settings.scopes == ("openid", "profile", "email") and settings.id_token_alg == "ES256"


def test_a_public_client_authenticates_with_none_and_cannot_drop_pkce() -> None:
    assert clients.clean({**GOOD, "client_type": "public"}).auth_method == "none"
    with pytest.raises(AppError) as refused:
        clients.clean({**GOOD, "client_type": "public", "require_pkce": False})
    assert refused.value.fields.keys() == {"require_pkce"}


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"client_type": "trusted"}, "client_type"),
        ({"auth_method": "none"}, "auth_method"),
        ({"client_type": "public", "auth_method": "client_secret_basic"}, "auth_method"),
        ({"redirect_uris": []}, "redirect_uris"),
        ({"redirect_uris": ["/relative/cb"]}, "redirect_uris"),
        ({"redirect_uris": ["https://cms.example.com/cb#frag"]}, "redirect_uris"),
        ({"redirect_uris": ["javascript:alert(1)"]}, "redirect_uris"),
        ({"redirect_uris": ["https://user:pw@cms.example.com/cb"]}, "redirect_uris"),
        ({"post_logout_redirect_uris": ["ftp://cms.example.com/"]}, "post_logout_redirect_uris"),
        ({"backchannel_logout_uri": "https://cms.example.com/logout#x"}, "backchannel_logout_uri"),
        ({"auth_method": "private_key_jwt"}, "jwks_uri"),
        ({"grant_types": ["implicit"]}, "grant_types"),
        ({"grant_types": ["refresh_token"]}, "grant_types"),
        ({"grant_types": []}, "grant_types"),
        ({"client_type": "public", "grant_types": ["client_credentials"]}, "grant_types"),
        ({"scopes": ["profile"]}, "scopes"),
        ({"scopes": ["openid", 'bad"scope']}, "scopes"),
        ({"audiences": ["a" * 201]}, "audiences"),
        ({"id_token_alg": "HS256"}, "id_token_alg"),
        ({"access_token_ttl": 5}, "access_token_ttl"),
        ({"access_token_ttl": 10**6}, "access_token_ttl"),
        ({"refresh_token_ttl": "soon"}, "refresh_token_ttl"),
        ({"first_party": "maybe"}, "first_party"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_settings_are_refused_on_their_field(values: dict[str, Any], field: str) -> None:
    with pytest.raises(AppError) as refused:
        clients.clean({**GOOD, **values})
    assert refused.value.code == "validation_failed"
    assert list(refused.value.fields) == [field], refused.value.fields


def test_http_redirects_only_to_loopback_in_production() -> None:
    assert clients.clean({**GOOD, "redirect_uris": ["http://127.0.0.1:3000/cb"]}, production=True)
    assert clients.clean({**GOOD, "redirect_uris": ["http://cms.internal/cb"]}, production=False)
    with pytest.raises(AppError) as refused:
        clients.clean({**GOOD, "redirect_uris": ["http://cms.example.com/cb"]}, production=True)
    assert "https" in refused.value.fields["redirect_uris"]


def test_secrets_are_compared_by_hash() -> None:
    secret = clients.new_secret()
    assert secret.startswith("amic_") and len(secret) > 40
    row = OidcClient(secret_hash=clients.hash_secret(secret))
    assert clients.check_secret(row, secret)
    assert not clients.check_secret(row, secret + "x") and not clients.check_secret(row, "")


def test_amr_acr_and_sid() -> None:
    assert amr(["password"], False) == ["pwd"]
    assert amr(["password", "totp"], True) == ["pwd", "otp", "mfa"]
    assert amr(["webauthn"], True) == ["hwk", "mfa"]
    assert amr(["oauth", "recovery_code"], True) == ["fed", "otp", "mfa"]
    assert wants_mfa(f"{ACR_SFA} {ACR_MFA}") and not wants_mfa(ACR_SFA) and not wants_mfa(None)
    assert sid_for("a" * 64) == sid_for("a" * 64) != sid_for("b" * 64)
