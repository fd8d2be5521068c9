"""The vocabulary the catalog is built from: provider type ids, auth modes, capability kinds and field types.

`AuthProviderType` is an open id: a catalog entry's file name (`app/providers/catalog/<id>.yaml`, or a file in
`AMI_AUTH_CATALOG_DIR`). It used to be a closed enum, which made every new provider a code change and let a
`match` over ids decide behaviour; now no code branches on an id (hooks aside), so the set of ids is whatever
the catalog holds, and an id is checked by looking it up there. What code does branch on are the closed sets
below: the auth mode and the capability kinds derived from it, each `match` over them ending in
`assert_never` so mypy reports a switch that misses a case.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, NewType

# A catalog id such as "google": `^[a-z][a-z0-9_]{1,39}$`, validated by the catalog JSON Schema.
AuthProviderType = NewType("AuthProviderType", str)


class AuthMode(StrEnum):
    PASSWORD = "password"
    OAUTH2 = "oauth2"
    OIDC = "oidc"
    API_KEY = "api_key"
    SMTP = "smtp"


class FieldType(StrEnum):
    STRING = "string"
    URL = "url"
    # A host name or IP address the app connects to (no scheme, no port), e.g. an SMTP server. Like every
    # url field it goes through the outbound guard; tests/integration/test_outbound_settings.py finds both.
    HOST = "host"
    EMAIL = "email"
    INTEGER = "integer"
    BOOLEAN = "boolean"
    ENUM = "enum"
    SECRET = "secret"
    TEXT = "text"
    STRING_LIST = "string_list"
    JSON = "json"


# The two field sets an entry declares: set once per provider config (by an admin), or per connected account.
Which = Literal["config", "account"]
FIELD_SETS: tuple[Which, Which] = ("config", "account")

# How a user's account of a type is connected: through an OAuth redirect (or the device flow), by typing a
# secret into the secure dialog (API keys, SMTP passwords), or not at all (first-party passwords).
ConnectKind = Literal["oauth", "secret", "none"]
# How a type's tokens or credential are checked: one HTTP request, an SMTP login, OIDC discovery, nothing.
VerifyKind = Literal["http", "smtp", "discovery", "none"]
# What revoking does: send the catalog's revoke request; nothing to send (a hint says what to do by hand);
# nothing to revoke (first-party passwords).
RevokeKind = Literal["request", "unsupported", "none"]
# Whether the refresh job renews a type's tokens (RFC 6749 §6).
RefreshKind = Literal["standard", "none"]
