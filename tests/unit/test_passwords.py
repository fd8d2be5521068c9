"""Hashing parameters and the password policy (NIST SP 800-63B 5.1.1.2), incl. the breached-password check."""

from __future__ import annotations

import logging
from pathlib import Path

import argon2
import pytest

from app.auth import passwords
from app.net import OutboundClient
from app.settings import Settings
from tests.conftest import make_settings
from tests.support.live import free_port
from tests.support.range_api import RangeApi, range_api, sha1_hex

LONG_OK = "violet submarine under a paper moon"


@pytest.fixture
def cheap(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, f"sqlite:///{tmp_path / 'x.db'}")


def test_default_parameters_are_owasp_argon2id(tmp_path: Path) -> None:
    defaults = make_settings(
        tmp_path, f"sqlite:///{tmp_path / 'x.db'}", AMI_AUTH_ARGON2_MEMORY_KIB="", AMI_AUTH_ARGON2_TIME_COST=""
    )
    stored = passwords.hash_password(defaults, LONG_OK)
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert passwords.verify_password(defaults, stored, LONG_OK)
    assert not passwords.verify_password(defaults, stored, LONG_OK + "!")


def test_parameters_come_from_settings(tmp_path: Path) -> None:
    custom = make_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'x.db'}",
        AMI_AUTH_ARGON2_MEMORY_KIB="2048",
        AMI_AUTH_ARGON2_TIME_COST="3",
        AMI_AUTH_ARGON2_PARALLELISM="2",
    )
    params = argon2.extract_parameters(passwords.hash_password(custom, LONG_OK))
    assert (params.type, params.memory_cost, params.time_cost, params.parallelism) == (argon2.Type.ID, 2048, 3, 2)


def test_stale_hash_needs_rehash_and_still_verifies(cheap: Settings) -> None:
    old = argon2.PasswordHasher(memory_cost=2048, time_cost=1, parallelism=1).hash(LONG_OK)
    assert passwords.verify_password(cheap, old, LONG_OK)
    assert passwords.needs_rehash(cheap, old)
    assert not passwords.needs_rehash(cheap, passwords.hash_password(cheap, LONG_OK))


def test_length_bounds_count_characters(cheap: Settings) -> None:
    assert passwords.policy_problem(cheap, "a" * 3 + "bcdefghijk") is None  # 13 characters, no rules about kinds
    assert passwords.policy_problem(cheap, "ünïcödé pass") is None  # 12 characters, not bytes
    assert passwords.policy_problem(cheap, "x7!q-short") == "Use at least 12 characters."
    assert passwords.policy_problem(cheap, "z" * 256) is None
    assert passwords.policy_problem(cheap, "z" * 257) == "Use at most 256 characters."


def test_min_length_is_configurable(tmp_path: Path) -> None:
    strict = make_settings(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", AMI_AUTH_PASSWORD_MIN_LENGTH="20")
    assert passwords.policy_problem(strict, LONG_OK[:19]) == "Use at least 20 characters."
    assert passwords.policy_problem(strict, LONG_OK) is None


def test_no_composition_rules(cheap: Settings) -> None:
    # All lower case, no digits, no symbols: fine when long and not common (SP 800-63B 5.1.1.2).
    assert passwords.policy_problem(cheap, "lowercase only words here") is None


def test_common_list_is_the_first_10000_of_djangos() -> None:
    common = passwords.common_passwords()
    assert len(common) == 10_000
    assert {"123456", "password", "qwerty123456", "#1bitch"} <= common
    header = "\n".join(passwords.COMMON_PASSWORDS_FILE.read_text().splitlines()[:7])
    assert "Django" in header and "BSD 3-Clause" in header  # source and licence travel with the data


@pytest.mark.parametrize("password", ["qwerty123456", "QWERTY123456", "Password1234", "1q2w3e4r5t6y", " qwerty123456"])
def test_common_passwords_are_refused_case_insensitively(cheap: Settings, password: str) -> None:
    assert passwords.policy_problem(cheap, password) == (
        "This password is one of the most common passwords. Choose one that is harder to guess."
    )


def test_short_common_password_refused_when_min_length_allows_it(tmp_path: Path) -> None:
    lenient = make_settings(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", AMI_AUTH_PASSWORD_MIN_LENGTH="8")
    assert passwords.policy_problem(lenient, "Password") is not None
    assert "common" in (passwords.policy_problem(lenient, "iloveyou") or "")
    assert passwords.policy_problem(lenient, "tr0ub4dor&3x") is None


def test_password_containing_the_email_local_part(cheap: Settings) -> None:
    assert passwords.policy_problem(cheap, "my name is Alice.Smith ok", "alice.smith@example.com") == (
        "The password contains \u201calice.smith\u201d, the part of the email address before the @. "
        "Choose one without it."
    )
    assert passwords.policy_problem(cheap, LONG_OK, "alice.smith@example.com") is None


# --- breached passwords: the k-anonymity range API ------------------------------------------------------


def _pwned_settings(tmp_path: Path, url: str, **env: str) -> Settings:
    return make_settings(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", AMI_AUTH_PWNED_RANGE_URL=url, **env)


def test_breached_password_refused_and_only_a_prefix_is_sent(tmp_path: Path) -> None:
    breached = "monkey business 1987"
    with range_api(RangeApi(breached={breached: 4321})) as api:
        settings = _pwned_settings(tmp_path, api.url)
        with OutboundClient.from_settings(settings) as client:
            problem = passwords.policy_problem(settings, breached, client=client)
            assert problem is not None and "data breach" in problem
            assert passwords.breach_count(settings, breached, client=client) == 4321
            assert passwords.policy_problem(settings, LONG_OK, client=client) is None
    path, headers = api.requests[0]
    assert path == f"/range/{sha1_hex(breached)[:5]}"
    assert headers["add-padding"] == "true"
    assert all(breached not in p and sha1_hex(breached)[5:] not in p for p, _ in api.requests)


def test_padding_line_with_count_zero_is_not_a_breach(tmp_path: Path) -> None:
    with range_api(RangeApi(padding_passwords={LONG_OK})) as api:
        settings = _pwned_settings(tmp_path, api.url)
        assert passwords.breach_count(settings, LONG_OK) == 0  # present, but as padding
        assert passwords.policy_problem(settings, LONG_OK) is None
    assert api.requests, "the check must have asked the API"


def test_breach_check_is_off_by_default(cheap: Settings) -> None:
    assert cheap.pwned_range_url is None
    assert passwords.breach_count(cheap, "monkey business 1987") is None


def test_unreachable_range_api_allows_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = _pwned_settings(tmp_path, f"http://127.0.0.1:{free_port()}/range", AMI_AUTH_OUTBOUND_RETRIES="0")
    caplog.set_level(logging.WARNING, logger="ami_auth.passwords")
    assert passwords.policy_problem(settings, LONG_OK) is None
    assert "breached-password check skipped" in caplog.text


def test_range_api_error_status_allows_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with range_api(RangeApi(breached={LONG_OK: 3}, status=404)) as api:
        settings = _pwned_settings(tmp_path, api.url)
        caplog.set_level(logging.WARNING, logger="ami_auth.passwords")
        assert passwords.policy_problem(settings, LONG_OK) is None
    assert "answered HTTP 404" in caplog.text
