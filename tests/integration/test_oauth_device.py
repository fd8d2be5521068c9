"""The device authorization grant (RFC 8628) against the real OpenID Provider's device pages."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from app.errors import AppError
from app.net import OutboundClient
from app.oauth import (
    DeviceAuthorization,
    DeviceResult,
    DiscoveryCache,
    ProviderMetadata,
    poll_once,
    refresh,
    start_device_authorization,
    wait_for_device_token,
)
from tests.support.op import OpenIDProvider, op_device_login, running_op

SCOPES = ("openid", "email", "offline_access")
FAST = 0.01  # the polling-interval override tests use, as AMI_AUTH_DEVICE_POLL_INTERVAL would


@pytest.fixture(scope="module")
def op() -> Iterator[OpenIDProvider]:
    # deviceSlowDown: the OP answers `slow_down` to a poll within 30 s of the previous one (RFC 8628 §3.5).
    with running_op(deviceSlowDown=30) as provider:
        yield provider


@pytest.fixture(scope="module")
def interval_op() -> Iterator[OpenIDProvider]:
    """An OP that names its polling interval and whose device codes live 1 s."""
    with running_op(deviceInterval=7, ttl={"DeviceCode": 1}) as provider:
        yield provider


@pytest.fixture(scope="module")
def outbound() -> Iterator[OutboundClient]:
    with OutboundClient(allow=("127.0.0.1",), retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def cache(outbound: OutboundClient) -> DiscoveryCache:
    return DiscoveryCache(outbound)


@pytest.fixture(scope="module")
def metadata(op: OpenIDProvider, cache: DiscoveryCache) -> ProviderMetadata:
    return cache.metadata(op.issuer)


def _start(outbound: OutboundClient, metadata: ProviderMetadata, op: OpenIDProvider) -> DeviceAuthorization:
    return start_device_authorization(outbound, metadata, op.client.credentials, SCOPES, interval=FAST)


def test_device_flow_end_to_end(
    op: OpenIDProvider, outbound: OutboundClient, metadata: ProviderMetadata, cache: DiscoveryCache
) -> None:
    credentials = op.client.credentials
    device = _start(outbound, metadata, op)
    assert device.interval == FAST
    assert device.user_code and device.verification_uri == f"{op.issuer}/device"
    assert device.verification_uri_complete is not None and device.user_code in device.verification_uri_complete
    assert device.expires_at > datetime.now(UTC)

    # Before the user acts, the provider says "pending".
    first = poll_once(outbound, metadata, credentials, device, keys=cache)
    assert first.status == "pending" and first.tokens is None

    page = op_device_login(device.verification_uri_complete, "dora")
    assert "Sign-in Success" in page

    # The session stores the device between htmx polls; it survives the round trip.
    stored = DeviceAuthorization.from_dict(first.device.to_dict())
    result = poll_once(outbound, metadata, credentials, stored, keys=cache)
    assert result.status == "approved"
    assert result.tokens is not None
    assert result.tokens.refresh_token
    assert result.tokens.id_claims is not None and result.tokens.id_claims["sub"] == "dora"
    assert set(result.tokens.scopes) == set(SCOPES)
    assert refresh(outbound, metadata, credentials, result.tokens).access_token

    # The device code is single use.
    with pytest.raises(AppError) as excinfo:
        poll_once(outbound, metadata, credentials, stored)
    assert excinfo.value.code == "token_expired"
    assert "already used" in (excinfo.value.message or "")


def test_polling_too_fast_gets_slow_down_and_a_longer_interval(
    op: OpenIDProvider, outbound: OutboundClient, metadata: ProviderMetadata
) -> None:
    credentials = op.client.credentials
    device = _start(outbound, metadata, op)
    assert poll_once(outbound, metadata, credentials, device).status == "pending"
    second = poll_once(outbound, metadata, credentials, device)
    assert second.status == "slow_down"
    assert second.interval == pytest.approx(FAST + 5)  # RFC 8628 §3.5: +5 s, for every later poll too
    third = poll_once(outbound, metadata, credentials, second.device)
    assert third.status == "slow_down"
    assert third.interval == pytest.approx(FAST + 10)


def test_user_denies_the_device(op: OpenIDProvider, outbound: OutboundClient, metadata: ProviderMetadata) -> None:
    device = _start(outbound, metadata, op)
    assert device.verification_uri_complete is not None
    op_device_login(device.verification_uri_complete, approve=False)
    with pytest.raises(AppError) as excinfo:
        poll_once(outbound, metadata, op.client.credentials, device)
    assert excinfo.value.code == "consent_required"


def test_blocking_helper_waits_for_approval(
    op: OpenIDProvider, outbound: OutboundClient, metadata: ProviderMetadata, cache: DiscoveryCache
) -> None:
    device = _start(outbound, metadata, op)
    assert device.verification_uri_complete is not None
    seen: list[str] = []
    waits: list[float] = []

    def on_poll(result: DeviceResult) -> None:
        seen.append(result.status)
        if result.status == "pending":
            assert device.verification_uri_complete is not None
            op_device_login(device.verification_uri_complete, "erin")

    tokens = wait_for_device_token(
        outbound, metadata, op.client.credentials, device, keys=cache, sleep=waits.append, on_poll=on_poll
    )
    assert seen == ["pending", "approved"]
    assert waits == [FAST, FAST]
    assert tokens.id_claims is not None and tokens.id_claims["sub"] == "erin"


def test_server_interval_is_honoured_and_defaults_to_five_seconds(
    op: OpenIDProvider, interval_op: OpenIDProvider, outbound: OutboundClient, metadata: ProviderMetadata
) -> None:
    # oidc-provider names no interval: RFC 8628 §3.2 says 5 s.
    plain = start_device_authorization(outbound, metadata, op.client.credentials, SCOPES)
    assert plain.interval == 5.0
    other = DiscoveryCache(outbound).metadata(interval_op.issuer)
    named = start_device_authorization(outbound, other, interval_op.client.credentials, SCOPES)
    assert named.interval == 7.0


def test_expired_device_code(interval_op: OpenIDProvider, outbound: OutboundClient) -> None:
    metadata = DiscoveryCache(outbound).metadata(interval_op.issuer)
    credentials = interval_op.client.credentials
    device = start_device_authorization(outbound, metadata, credentials, SCOPES, interval=FAST)
    # Known locally to be expired: no request is sent.
    with pytest.raises(AppError) as excinfo:
        poll_once(outbound, metadata, credentials, device, now=device.expires_at)
    assert excinfo.value.code == "token_expired"
    # The provider's own `expired_token` (our clock behind the provider's) maps the same way.
    before = interval_op.grant_count("urn:ietf:params:oauth:grant-type:device_code", 400)
    time.sleep(1.5)
    with pytest.raises(AppError) as excinfo:
        poll_once(outbound, metadata, credentials, device, now=device.expires_at - timedelta(seconds=30))
    assert excinfo.value.code == "token_expired"
    assert "expired before it was approved" in (excinfo.value.message or "")
    assert interval_op.grant_count("urn:ietf:params:oauth:grant-type:device_code", 400) == before + 1
