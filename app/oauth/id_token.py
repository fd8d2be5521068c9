"""ID-token validation (OIDC Core §3.1.3.7), with joserfc for the signature and Authlib for the claims.

The order matters: the algorithm is checked against the provider's metadata before any key is chosen
(so ``alg: none`` and HMAC-with-a-public-key confusion never reach a verifier), the signature before
any claim is trusted, then ``iss``, ``aud``/``azp``, ``exp``/``iat``, ``nonce`` and provider rules.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol

from authlib.oidc.core import CodeIDToken
from joserfc import jws, jwt
from joserfc.errors import ExpiredTokenError, InvalidClaimError, JoseError, MissingClaimError
from joserfc.jwk import Key, OctKey

from app.errors import N_, AppError
from app.oauth.discovery import TENANT_PLACEHOLDER, ProviderMetadata

__all__ = ["DEFAULT_LEEWAY", "IdTokenPolicy", "KeySource", "validate_id_token"]

DEFAULT_LEEWAY: Final = 60
HMAC_ALGS: Final = frozenset({"HS256", "HS384", "HS512"})
HINT: Final = "Sign in again; if it keeps failing, check the provider configuration"


class KeySource(Protocol):
    """Where verification keys come from; :class:`app.oauth.discovery.DiscoveryCache` is one."""

    def signing_key(self, jwks_uri: str, kid: str | None) -> Key: ...


@dataclass(frozen=True)
class IdTokenPolicy:
    """Per-provider rules on top of OIDC Core.

    ``leeway``: seconds of clock skew allowed on ``exp``/``iat``/``nbf``.
    ``hosted_domain``: Google Workspace domain the ``hd`` claim must equal (the ``hd`` request parameter
    is only a hint to Google's account chooser; the claim is what proves it).
    ``allowed_tenants``: for an Azure AD multi-tenant issuer, the ``tid`` values accepted (empty: any).
    """

    leeway: int = DEFAULT_LEEWAY
    hosted_domain: str | None = None
    allowed_tenants: tuple[str, ...] = ()


def _fail(message: str) -> AppError:
    return AppError("validation_failed", message, HINT)


def _expected_issuer(metadata: ProviderMetadata, claims: dict[str, Any], policy: IdTokenPolicy) -> str:
    issuer = metadata.issuer
    if issuer is None:
        raise AppError(
            "invalid_config",
            N_("The provider has no issuer, so its ID tokens cannot be checked"),
            N_("Set the provider's issuer (or its discovery URL)"),
        )
    if not metadata.issuer_is_template:
        return issuer
    # Azure AD multi-tenant: the issuer is https://login.microsoftonline.com/{tenantid}/v2.0 and the
    # token's own `tid` fills it in; the result must then equal the token's `iss` exactly.
    tenant = claims.get("tid")
    if not isinstance(tenant, str) or not tenant or "/" in tenant:
        raise _fail(N_("The ID token has no tenant (tid) claim"))
    if policy.allowed_tenants and tenant not in policy.allowed_tenants:
        raise _fail(N_("The ID token comes from a tenant that is not allowed"))
    return issuer.replace(TENANT_PLACEHOLDER, tenant)


def validate_id_token(
    id_token: str,
    *,
    metadata: ProviderMetadata,
    client_id: str,
    keys: KeySource,
    nonce: str | None,
    policy: IdTokenPolicy = IdTokenPolicy(),
    client_secret: str | None = None,
    access_token: str | None = None,
    now: datetime | float | None = None,
) -> dict[str, Any]:
    """Check an ID token and return its claims; any failure raises ``validation_failed``.

    ``nonce`` is the one sent in the authorization request: when given, the token must carry exactly it.
    ``client_secret`` is only used for HS256/384/512 tokens (OIDC Core §10.1), never a JWKS key.
    ``access_token``, when given, is checked against ``at_hash`` if the token has one.
    """
    try:
        header = jws.extract_compact(id_token.encode("ascii")).protected
    except (JoseError, ValueError, UnicodeError):
        raise _fail(N_("The ID token is not a signed JWT")) from None
    alg = header.get("alg")
    if not isinstance(alg, str) or alg == "none":
        raise _fail(N_("The ID token is not signed"))
    if alg not in metadata.id_token_signing_alg_values_supported:
        raise _fail(N_("The ID token is signed with %(alg)s, which the provider does not use", alg=alg[:20]))

    key: Key
    if alg in HMAC_ALGS:
        # A shared-secret signature can only be checked with the client secret; using a public key from
        # the JWKS as an HMAC secret is the classic algorithm-confusion forgery.
        if not client_secret:
            raise _fail(N_("The ID token is signed with a shared secret, but this client has none"))
        try:
            key = OctKey.import_key(client_secret)
        except ValueError:
            # joserfc refuses a secret that parses as a public key: exactly the confusion we guard against.
            raise AppError("invalid_config", N_("The client secret cannot be an HMAC key"), HINT) from None
    else:
        if metadata.jwks_uri is None:
            raise AppError("invalid_config", N_("The provider has no JWKS URI"), N_("Set the provider's JWKS URI"))
        kid = header.get("kid")
        key = keys.signing_key(metadata.jwks_uri, kid if isinstance(kid, str) else None)

    try:
        token = jwt.decode(id_token, key, algorithms=[alg])
    except JoseError:
        raise _fail(N_("The ID token's signature does not verify")) from None

    claims = dict(token.claims)
    expected_issuer = _expected_issuer(metadata, claims, policy)
    validator = CodeIDToken(
        claims,
        token.header,
        options={
            "iss": {"essential": True, "value": expected_issuer},
            "aud": {"essential": True, "value": client_id},
            "sub": {"essential": True},
        },
        params={"nonce": nonce, "client_id": client_id, "access_token": access_token},
    )
    when = time.time() if now is None else now.timestamp() if isinstance(now, datetime) else now
    try:
        validator.validate(now=int(when), leeway=policy.leeway)
    except ExpiredTokenError:
        raise _fail(N_("The ID token has expired")) from None
    except MissingClaimError as exc:
        raise _fail(N_("The ID token lacks the %(claim)s claim", claim=exc.claim[:40])) from None
    except InvalidClaimError as exc:
        raise _fail(N_("The ID token's %(claim)s claim is not valid", claim=exc.claim[:40])) from None
    except JoseError:
        raise _fail(N_("The ID token's claims are not valid")) from None

    if policy.hosted_domain is not None:
        hd = claims.get("hd")
        if not isinstance(hd, str) or hd.lower() != policy.hosted_domain.lower():
            raise _fail(N_("The account is not in the allowed hosted domain"))
    return claims
