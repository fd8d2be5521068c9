"""The throttle's settings: defaults, bounds and the Redis key prefix."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import SettingsError, load_settings


def test_defaults(tmp_path: Path) -> None:
    s = load_settings({"AMI_AUTH_ENV": "test", "AMI_AUTH_SECRET_KEY": "s" * 40, "AMI_AUTH_INSTANCE_DIR": str(tmp_path)})
    assert (s.throttle_ip_per_minute, s.throttle_account_failures) == (30, 5)
    assert (s.throttle_lock_seconds, s.throttle_lock_max_seconds) == (60, 3600)
    assert s.redis_key_prefix == "ami-auth"
    assert (s.argon2_memory_kib, s.argon2_time_cost, s.argon2_parallelism) == (19456, 2, 1)
    assert s.password_min_length == 12 and s.pwned_range_url is None


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("AMI_AUTH_REDIS_KEY_PREFIX", "has space", "must be 1-64 letters, digits or '_.:-'"),
        ("AMI_AUTH_REDIS_KEY_PREFIX", "x" * 65, "must be 1-64 letters"),
        ("AMI_AUTH_THROTTLE_ACCOUNT_FAILURES", "0", "must be between 1 and 100"),
        ("AMI_AUTH_THROTTLE_LOCK_SECONDS", "0", "must be between 1 and 86400"),
        ("AMI_AUTH_THROTTLE_LOCK_MAX_SECONDS", "30", "must be at least AMI_AUTH_THROTTLE_LOCK_SECONDS (60), got 30"),
        ("AMI_AUTH_THROTTLE_IP_PER_MINUTE", "0", "must be at least 1"),
        ("AMI_AUTH_PWNED_RANGE_URL", "ftp://x", "must be an http(s) URL"),
    ],
)
def test_bad_values_name_the_variable(tmp_path: Path, variable: str, value: str, expected: str) -> None:
    env = {"AMI_AUTH_ENV": "test", "AMI_AUTH_SECRET_KEY": "s" * 40, variable: value}
    env["AMI_AUTH_INSTANCE_DIR"] = str(tmp_path)
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    assert info.value.variable == variable and expected in info.value.problem
