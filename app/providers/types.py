"""The closed sets the catalog is built from: provider types, auth modes and field types.

`AuthProviderType` is the enum of catalog ids. The registry refuses to start when the YAML files and this
enum differ, and every `match` over it ends in `assert_never` so mypy reports a switch that misses a type.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal


class AuthProviderType(StrEnum):
    AMI_CREDENTIALS = "ami_credentials"
    GOOGLE = "google"
    GITHUB = "github"
    AZURE_AD = "azure_ad"
    GENERIC_OIDC = "generic_oidc"
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    HUGGINGFACE = "huggingface"
    GENERIC_API_KEY = "generic_api_key"
    SMTP = "smtp"


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
