"""The device authorization grant (RFC 8628) for headless connects.

:func:`poll_once` is one step (the console polls it from htmx, storing the returned
:class:`DeviceAuthorization` between steps); :func:`wait_for_device_token` loops it for the CLI.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from authlib.common.urls import add_params_to_qs

from app.errors import N_, AppError
from app.net import OutboundClient
from app.oauth.discovery import ProviderMetadata
from app.oauth.id_token import IdTokenPolicy, KeySource
from app.oauth.tokens import FORM, ClientCredentials, TokenSet, endpoint_error, id_token_claims, token_request

__all__ = [
    "DEFAULT_INTERVAL",
    "DEVICE_GRANT_TYPE",
    "SLOW_DOWN_STEP",
    "DeviceAuthorization",
    "DeviceResult",
    "poll_once",
    "start_device_authorization",
    "wait_for_device_token",
]

DEVICE_GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:device_code"
# RFC 8628 §3.2: without `interval` in the response the client must wait 5 seconds between polls.
DEFAULT_INTERVAL: Final = 5.0
# RFC 8628 §3.5: on `slow_down` the interval grows by 5 seconds for this and every later request.
SLOW_DOWN_STEP: Final = 5.0
_PASS: Final = frozenset({"authorization_pending", "slow_down"})


@dataclass(frozen=True)
class DeviceAuthorization:
    """A device authorization in progress. Show ``user_code`` and ``verification_uri`` (or the complete
    URI, e.g. as a QR code) to the user; keep the whole object (``to_dict``) for polling."""

    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    expires_at: datetime
    interval: float
    verification_uri_complete: str | None = None
    scopes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_code": self.device_code,
            "user_code": self.user_code,
            "verification_uri": self.verification_uri,
            "verification_uri_complete": self.verification_uri_complete,
            "expires_at": self.expires_at.isoformat(),
            "interval": self.interval,
            "scopes": list(self.scopes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceAuthorization:
        return cls(
            device_code=str(data["device_code"]),
            user_code=str(data["user_code"]),
            verification_uri=str(data["verification_uri"]),
            verification_uri_complete=data.get("verification_uri_complete"),
            expires_at=datetime.fromisoformat(str(data["expires_at"])),
            interval=float(data["interval"]),
            scopes=tuple(data.get("scopes") or ()),
        )


@dataclass(frozen=True)
class DeviceResult:
    """One poll's outcome. ``device`` carries the interval to use from now on (grown after ``slow_down``);
    store it in place of the previous one. ``tokens`` is set when ``status`` is ``approved``."""

    status: Literal["pending", "slow_down", "approved"]
    device: DeviceAuthorization
    tokens: TokenSet | None = None

    @property
    def interval(self) -> float:
        return self.device.interval


def _positive(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        return None
    return float(value)


def _text(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise AppError("provider_unreachable", N_("The device authorization response has no %(name)s", name=name))
    return value


def start_device_authorization(
    client: OutboundClient,
    metadata: ProviderMetadata,
    credentials: ClientCredentials,
    scopes: Sequence[str],
    *,
    interval: float | None = None,
    extra_params: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> DeviceAuthorization:
    """Ask the provider for a device and user code (RFC 8628 §3.1-3.2).

    ``interval`` overrides the polling interval (tests, ``AMI_AUTH_DEVICE_POLL_INTERVAL``); otherwise
    the provider's, or 5 seconds when it names none.
    """
    url = metadata.device_authorization_endpoint
    if url is None:
        raise AppError(
            "invalid_config", N_("The provider does not offer the device flow"), N_("Turn the device flow off for it")
        )
    params: list[tuple[str, str]] = [("scope", " ".join(dict.fromkeys(scopes)))] if scopes else []
    params.extend((extra_params or {}).items())
    body = add_params_to_qs("", params)
    headers = {"Content-Type": FORM, "Accept": "application/json"}
    headers, body = credentials.authenticate(url, headers, body)
    response = client.post(url, headers=headers, content=body.encode())
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.status_code != 200 or not isinstance(data, dict) or "error" in data:
        raise endpoint_error(response, data if isinstance(data, dict) else None, grant="device_code")
    expires_in = _positive(data.get("expires_in"))
    if expires_in is None:
        raise AppError("provider_unreachable", N_("The device authorization response has no expires_in"))
    if interval is None:
        interval = _positive(data.get("interval")) or DEFAULT_INTERVAL
    complete = data.get("verification_uri_complete")
    return DeviceAuthorization(
        device_code=_text(data, "device_code"),
        user_code=_text(data, "user_code"),
        # Google still calls it `verification_url` (pre-RFC draft naming).
        verification_uri=_text(data, "verification_uri" if "verification_uri" in data else "verification_url"),
        verification_uri_complete=complete if isinstance(complete, str) and complete else None,
        expires_at=(now or datetime.now(UTC)) + timedelta(seconds=expires_in),
        interval=float(interval),
        scopes=tuple(dict.fromkeys(scopes)),
    )


def poll_once(
    client: OutboundClient,
    metadata: ProviderMetadata,
    credentials: ClientCredentials,
    device: DeviceAuthorization,
    *,
    keys: KeySource | None = None,
    policy: IdTokenPolicy = IdTokenPolicy(),
    default_expires_in: int | None = None,
    slow_down_step: float = SLOW_DOWN_STEP,
    now: datetime | None = None,
) -> DeviceResult:
    """Poll the token endpoint once (RFC 8628 §3.4-3.5).

    Returns ``pending`` or ``slow_down`` (with the interval grown by ``slow_down_step``) while the user has
    not finished; ``approved`` with the token set when they have. Raises ``token_expired`` when the code
    expired, ``consent_required`` when the user denied it. The caller waits ``result.interval`` seconds
    before the next poll. An ID token (``openid`` scope) is checked when ``keys`` is given; it has no nonce.
    """
    current = now or datetime.now(UTC)
    if current >= device.expires_at:
        raise AppError("token_expired", N_("The device code expired before it was approved"), N_("Start again"))
    body = token_request(
        client,
        metadata,
        credentials,
        DEVICE_GRANT_TYPE,
        grant="device_code",
        pass_errors=_PASS,
        device_code=device.device_code,
    )
    error = body.get("error")
    if error == "authorization_pending":
        return DeviceResult("pending", device)
    if error == "slow_down":
        return DeviceResult("slow_down", replace(device, interval=device.interval + slow_down_step))
    tokens = TokenSet.from_response(
        body, now=current, default_expires_in=default_expires_in, requested_scopes=device.scopes
    )
    if tokens.id_token is not None and keys is not None:
        claims = id_token_claims(tokens, metadata, credentials, keys=keys, policy=policy, nonce=None, now=current)
        tokens = replace(tokens, id_claims=claims)
    return DeviceResult("approved", device, tokens)


def wait_for_device_token(
    client: OutboundClient,
    metadata: ProviderMetadata,
    credentials: ClientCredentials,
    device: DeviceAuthorization,
    *,
    keys: KeySource | None = None,
    policy: IdTokenPolicy = IdTokenPolicy(),
    default_expires_in: int | None = None,
    slow_down_step: float = SLOW_DOWN_STEP,
    sleep: Callable[[float], None] = time.sleep,
    on_poll: Callable[[DeviceResult], None] | None = None,
) -> TokenSet:
    """Poll until the user approves (for the CLI): wait ``interval`` before each poll, grow it on
    ``slow_down``; ``token_expired``/``consent_required`` as in :func:`poll_once`."""
    while True:
        sleep(device.interval)
        result = poll_once(
            client,
            metadata,
            credentials,
            device,
            keys=keys,
            policy=policy,
            default_expires_in=default_expires_in,
            slow_down_step=slow_down_step,
        )
        if on_poll is not None:
            on_poll(result)
        if result.tokens is not None:
            return result.tokens
        device = result.device
