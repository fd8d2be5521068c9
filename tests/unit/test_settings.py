"""Each bad setting gives its own clear message naming the variable."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from app.settings import SettingsError, load_settings, parse_master_keys

KEY = base64.b64encode(b"a" * 32).decode()
PROD = {
    "AMI_AUTH_ENV": "production",
    "AMI_AUTH_DATABASE_URL": "postgresql+psycopg://u@127.0.0.1/db",
    "AMI_AUTH_SECRET_KEY": "x" * 40,
    "AMI_AUTH_MASTER_KEYS": f"k1:{KEY}",
    "AMI_AUTH_BASE_URL": "https://auth.example.com",
}


def _err(env: dict[str, str]) -> SettingsError:
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    return info.value


def test_production_ok() -> None:
    s = load_settings(PROD)
    assert s.is_production and s.is_https and s.active_key.kid == "k1"
    assert "aaaa" not in repr(s) and KEY not in repr(s)  # key material never in repr


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("AMI_AUTH_MASTER_KEYS", None, "is required in production"),
        ("AMI_AUTH_MASTER_KEYS", "k1", "entry 1 must look like 'kid:<base64 of 32 bytes>'"),
        ("AMI_AUTH_MASTER_KEYS", "k1:!!!", "key 'k1' is not valid base64"),
        ("AMI_AUTH_MASTER_KEYS", "k1:" + base64.b64encode(b"short").decode(), "must decode to 32 bytes, got 5"),
        ("AMI_AUTH_MASTER_KEYS", f"k1:{KEY},k1:{KEY}", "key id 'k1' appears twice"),
        ("AMI_AUTH_MASTER_KEYS", f"bad id:{KEY}", "must be 1-32 letters"),
        ("AMI_AUTH_SECRET_KEY", None, "is required in production"),
        ("AMI_AUTH_SECRET_KEY", "short", "must be at least 32 characters"),
        ("AMI_AUTH_DATABASE_URL", None, "is required in production"),
        ("AMI_AUTH_DATABASE_URL", "mysql://x", "must be a sqlite:/// or postgresql+psycopg:// URL"),
        ("AMI_AUTH_BASE_URL", "http://auth.example.com", "must use https in production"),
        ("AMI_AUTH_BASE_URL", "auth.example.com", "must be an absolute http(s) URL"),
        ("AMI_AUTH_REDIS_URL", "memcached://x", "must be a redis:// or rediss:// URL"),
        ("AMI_AUTH_ENV", "staging", "must be development, test or production"),
        ("AMI_AUTH_SIGNUP", "maybe", "must be open, invite or closed"),
        ("AMI_AUTH_SESSION_IDLE_MINUTES", "soon", "must be a whole number"),
        ("AMI_AUTH_SESSION_IDLE_MINUTES", "0", "must be at least 1"),
        ("AMI_AUTH_OUTBOUND_TIMEOUT", "-1", "must be greater than 0"),
        ("AMI_AUTH_SCHEDULER", "perhaps", "must be true or false"),
        ("AMI_AUTH_CMS_ORIGINS", "https://cms.example.com/path", "must be an origin"),
        ("AMI_AUTH_OUTBOUND_ALLOW", "http://x", "is neither an IP, a CIDR range nor a host name"),
        ("AMI_AUTH_SMTP_URL", "http://mail", "must start with smtp://"),
        ("AMI_AUTH_LOG_LEVEL", "LOUD", "must be DEBUG, INFO, WARNING or ERROR"),
    ],
)
def test_each_bad_value_names_its_variable(variable: str, value: str | None, expected: str) -> None:
    env = dict(PROD)
    if value is None:
        env.pop(variable, None)
    else:
        env[variable] = value
    error = _err(env)
    assert error.variable == variable
    assert expected in str(error)
    assert str(error).startswith(variable + ": ")


def test_development_generates_private_keys(tmp_path: Path) -> None:
    s = load_settings({"AMI_AUTH_INSTANCE_DIR": str(tmp_path)})
    assert s.env == "development"
    for name in ("master_keys", "secret_key"):
        path = tmp_path / name
        assert path.stat().st_mode & 0o777 == 0o600
    again = load_settings({"AMI_AUTH_INSTANCE_DIR": str(tmp_path)})
    assert again.master_keys == s.master_keys and again.secret_key == s.secret_key
    assert s.database_url == f"sqlite:///{tmp_path.resolve() / 'ami-auth.db'}"


def test_first_key_encrypts_all_decrypt() -> None:
    k2 = base64.b64encode(b"b" * 32).decode()
    keys = parse_master_keys(f"new:{k2}, old:{KEY}")
    assert [k.kid for k in keys] == ["new", "old"]
    assert "b" * 32 not in repr(keys)


def test_cms_origins_normalised() -> None:
    s = load_settings({**PROD, "AMI_AUTH_CMS_ORIGINS": "https://cms.example.com/, http://localhost:3000"})
    assert s.cms_origins == ("https://cms.example.com", "http://localhost:3000")
