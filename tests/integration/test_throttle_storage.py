"""The throttle's rules on its real storages: memory (one process) and Redis (shared by workers and hosts)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from limits.storage import MemoryStorage, Storage

from app.auth import throttle
from app.settings import Settings
from tests.conftest import make_settings, redis_url
from tests.support.limits_storage import close_storage, redis_storage


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def storage(request: pytest.FixtureRequest) -> Iterator[Storage]:
    if request.param == "memory":
        memory = MemoryStorage()
        yield memory
        close_storage(memory)
        return
    with redis_storage(redis_url()) as shared:
        yield shared


def _settings(tmp_path: Path, **env: str) -> Settings:
    return make_settings(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", **env)


def _refused(storage: Storage, settings: Settings, email: str, ip: str = "198.51.100.7") -> throttle.Throttled:
    with pytest.raises(throttle.Throttled) as info:
        throttle.check_signin(storage, settings, email=email, ip=ip)
    return info.value


def test_lock_schedule_doubles_from_one_minute_to_one_hour(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    schedule = [throttle.lock_seconds(settings, n) for n in range(1, 13)]
    assert schedule == [0, 0, 0, 0, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert throttle.lock_seconds(settings, 10_000) == 3600


def test_fifth_failure_locks_for_a_minute(storage: Storage, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    for _ in range(4):
        throttle.check_signin(storage, settings, email="ann@example.com", ip="198.51.100.7")
        assert throttle.record_failure(storage, settings, "ann@example.com", "198.51.100.7") is None
    lock = throttle.record_failure(storage, settings, "ann@example.com", "198.51.100.7")
    assert lock is not None and lock.layer == "account" and lock.retry_after == 60
    refused = _refused(storage, settings, "ANN@example.com ")  # same account however it is typed
    assert refused.code == "rate_limited" and refused.http_status == 429
    assert 55 <= (refused.retry_after or 0) <= 60
    assert refused.help == "Try again in 1 minute."
    # Another IP is refused too: the lock is on the account.
    assert _refused(storage, settings, "ann@example.com", ip="203.0.113.50").layer == "account"
    # Other accounts are not affected.
    throttle.check_signin(storage, settings, email="bob@example.com", ip="198.51.100.7")


def test_lock_doubles_after_it_expires(storage: Storage, tmp_path: Path) -> None:
    # One-second base so the real expiry (memory timer or Redis TTL) can be waited for.
    settings = _settings(tmp_path, AMI_AUTH_THROTTLE_ACCOUNT_FAILURES="2", AMI_AUTH_THROTTLE_LOCK_SECONDS="1")
    email, ip = "dora@example.com", "198.51.100.7"
    throttle.record_failure(storage, settings, email, ip)
    first = throttle.record_failure(storage, settings, email, ip)
    assert first is not None and first.retry_after == 1
    _wait_unlocked(storage, email)
    throttle.check_signin(storage, settings, email=email, ip=ip)  # the lock has passed
    second = throttle.record_failure(storage, settings, email, ip)
    assert second is not None and second.retry_after == 2
    assert _refused(storage, settings, email).retry_after in (1, 2)
    _wait_unlocked(storage, email)
    third = throttle.record_failure(storage, settings, email, ip)
    assert third is not None and third.retry_after == 4
    assert throttle.account_status(storage, email).failures == 4


def _wait_unlocked(storage: Storage, email: str, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while throttle.account_status(storage, email).locked:
        assert time.monotonic() < deadline, "the lock did not expire"
        time.sleep(0.05)


def test_success_forgets_failures(storage: Storage, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    for _ in range(4):
        throttle.record_failure(storage, settings, "eve@example.com", "198.51.100.7")
    throttle.record_success(storage, settings, "eve@example.com", "198.51.100.7")
    assert throttle.account_status(storage, "eve@example.com").failures == 0
    for _ in range(4):
        assert throttle.record_failure(storage, settings, "eve@example.com", "198.51.100.7") is None
    throttle.check_signin(storage, settings, email="eve@example.com", ip="198.51.100.7")


def test_unlock_clears_the_account_lock(storage: Storage, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    for _ in range(5):
        throttle.record_failure(storage, settings, "fay@example.com", "198.51.100.7")
    assert throttle.account_status(storage, "fay@example.com").locked
    assert throttle.unlock_account(storage, "fay@example.com") is True
    assert throttle.account_status(storage, "fay@example.com") == throttle.AccountStatus(0, None)
    throttle.check_signin(storage, settings, email="fay@example.com", ip="198.51.100.7")
    assert throttle.unlock_account(storage, "fay@example.com") is False


def test_ip_limit_counts_every_attempt_across_accounts(storage: Storage, tmp_path: Path) -> None:
    settings = _settings(tmp_path, AMI_AUTH_THROTTLE_IP_PER_MINUTE="3")
    for n in range(3):
        throttle.check_signin(storage, settings, email=f"user{n}@example.com", ip="198.51.100.7")
    refused = _refused(storage, settings, "user9@example.com")
    assert refused.layer == "ip" and 1 <= (refused.retry_after or 0) <= 60
    throttle.check_signin(storage, settings, email="user9@example.com", ip="198.51.100.8")  # another client


def test_ipv6_clients_are_grouped_by_64(storage: Storage, tmp_path: Path) -> None:
    settings = _settings(tmp_path, AMI_AUTH_THROTTLE_IP_PER_MINUTE="2")
    throttle.check_signin(storage, settings, email="a@example.com", ip="2001:db8:1:2::1")
    throttle.check_signin(storage, settings, email="a@example.com", ip="2001:db8:1:2:ffff:ffff:ffff:fffe")
    assert _refused(storage, settings, "a@example.com", ip="2001:db8:1:2::9").layer == "ip"
    throttle.check_signin(storage, settings, email="a@example.com", ip="2001:db8:1:3::1")  # another /64


def test_ip_account_pair_survives_an_admin_unlock(storage: Storage, tmp_path: Path) -> None:
    # The account layer set high, to watch the pair layer on its own.
    settings = _settings(tmp_path, AMI_AUTH_THROTTLE_ACCOUNT_FAILURES="100")
    email, attacker, owner = "gil@example.com", "198.51.100.66", "203.0.113.5"
    limit = throttle.PAIR_FAILURES_PER_HOUR
    results = [throttle.record_failure(storage, settings, email, attacker) for _ in range(limit)]
    assert results[:-1] == [None] * (limit - 1)
    assert results[-1] is not None and results[-1].layer == "ip_account"
    assert 3500 <= (results[-1].retry_after or 0) <= 3600
    throttle.unlock_account(storage, email)
    assert _refused(storage, settings, email, ip=attacker).layer == "ip_account"
    throttle.check_signin(storage, settings, email=email, ip=owner)  # the owner still gets in


def test_unknown_email_counts_like_a_known_one(storage: Storage, tmp_path: Path) -> None:
    # The throttle never looks at the user table: its answer cannot reveal whether an account exists.
    settings = _settings(tmp_path)
    locks = [throttle.record_failure(storage, settings, "nobody@example.com", "198.51.100.7") for _ in range(5)]
    assert [lock is not None for lock in locks] == [False, False, False, False, True]


def test_mail_sends_per_recipient_and_per_ip(storage: Storage, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    for _ in range(throttle.MAIL_PER_RECIPIENT_PER_15_MINUTES):
        throttle.check_mail_send(storage, settings, email="hal@example.com", ip="198.51.100.7")
    with pytest.raises(throttle.Throttled) as info:
        throttle.check_mail_send(storage, settings, email="HAL@example.com", ip="198.51.100.8")
    assert info.value.layer == "mail_recipient" and 1 <= (info.value.retry_after or 0) <= 900
    sent = throttle.MAIL_PER_RECIPIENT_PER_15_MINUTES
    for n in range(throttle.MAIL_PER_IP_PER_HOUR - sent):
        throttle.check_mail_send(storage, settings, email=f"r{n}@example.com", ip="198.51.100.7")
    with pytest.raises(throttle.Throttled) as info:
        throttle.check_mail_send(storage, settings, email="new@example.com", ip="198.51.100.7")
    assert info.value.layer == "mail_ip" and 1 <= (info.value.retry_after or 0) <= 3600
    # A refused request does not use up the other budget: this recipient can still get mail.
    throttle.check_mail_send(storage, settings, email="new@example.com", ip="198.51.100.9")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(1, "1 second"), (45, "45 seconds"), (60, "1 minute"), (61, "2 minutes"), (120, "2 minutes"), (3600, "1 hour")],
)
def test_wait_is_described_rounded_up(seconds: int, text: str) -> None:
    assert throttle.describe_wait(seconds) == text


# --- smart lockout: known browsers and networks count apart from strangers ---------------------------------

OWNER_IP, OWNER_DEVICE = "203.0.113.5", "D" * 43


def _stranger_ip(n: int) -> str:
    return f"198.18.{n // 250}.{n % 250 + 1}"


def _lock_from_strangers(storage: Storage, settings: Settings, email: str) -> None:
    for n in range(settings.throttle_account_failures):
        throttle.check_signin(storage, settings, email=email, ip=_stranger_ip(n))
        throttle.record_failure(storage, settings, email, _stranger_ip(n))


def test_strangers_lock_the_unfamiliar_source_only(storage: Storage, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    email = "kit@example.com"
    throttle.remember_source(storage, email, ip=OWNER_IP, device=OWNER_DEVICE)
    _lock_from_strangers(storage, settings, email)
    refused = _refused(storage, settings, email, ip=_stranger_ip(99))
    assert (refused.layer, refused.source) == ("account", "unfamiliar")
    # A stranger with a made-up device id is a stranger: only a sign-in makes a browser known.
    with pytest.raises(throttle.Throttled):
        throttle.check_signin(storage, settings, email=email, ip=_stranger_ip(98), device="x" * 43)
    # The owner's browser, from anywhere, and any browser on the owner's network still get their checks.
    assert throttle.source_of(storage, email, _stranger_ip(97), OWNER_DEVICE) == "known_device"
    throttle.check_signin(storage, settings, email=email, ip=_stranger_ip(97), device=OWNER_DEVICE)
    assert throttle.source_of(storage, email, OWNER_IP) == "known_network"
    throttle.check_signin(storage, settings, email=email, ip=OWNER_IP)
    # Browsers and networks are known per account: the owner's cookie means nothing for another account.
    assert throttle.source_of(storage, "other@example.com", OWNER_IP, OWNER_DEVICE) == "unfamiliar"


def test_a_known_browser_has_its_own_count_and_lock(storage: Storage, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    email = "lyn@example.com"
    throttle.remember_source(storage, email, ip=None, device=OWNER_DEVICE)
    locks = [throttle.record_failure(storage, settings, email, _stranger_ip(n), device=OWNER_DEVICE) for n in range(5)]
    assert [lock is not None for lock in locks] == [False] * 4 + [True]
    assert locks[-1] is not None and locks[-1].source == "known_device"
    refused = _refused_device(storage, settings, email)
    assert (refused.layer, refused.source) == ("account", "known_device")
    # Strangers have a count of their own, untouched.
    assert throttle.account_status(storage, email) == throttle.AccountStatus(0, None)
    throttle.check_signin(storage, settings, email=email, ip=_stranger_ip(50))


def _refused_device(storage: Storage, settings: Settings, email: str) -> throttle.Throttled:
    with pytest.raises(throttle.Throttled) as info:
        throttle.check_signin(storage, settings, email=email, ip=_stranger_ip(60), device=OWNER_DEVICE)
    return info.value


def test_a_success_clears_only_the_source_it_came_through(storage: Storage, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    email = "max@example.com"
    throttle.remember_source(storage, email, ip=OWNER_IP, device=OWNER_DEVICE)
    for n in range(4):
        throttle.record_failure(storage, settings, email, _stranger_ip(n))
    throttle.record_success(storage, settings, email, OWNER_IP, device=OWNER_DEVICE)
    # The owner signing in does not give the stranger a fresh set of guesses.
    assert throttle.account_status(storage, email).failures == 4
    assert throttle.record_failure(storage, settings, email, _stranger_ip(9)) is not None


def test_unlock_clears_every_source(storage: Storage, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    email = "ned@example.com"
    throttle.remember_source(storage, email, ip=OWNER_IP, device=OWNER_DEVICE)
    _lock_from_strangers(storage, settings, email)
    for _ in range(5):
        throttle.record_failure(storage, settings, email, OWNER_IP, device=OWNER_DEVICE)
        throttle.record_failure(storage, settings, email, OWNER_IP)
    assert _refused_device(storage, settings, email).source == "known_device"
    assert _refused(storage, settings, email, ip=OWNER_IP).source == "known_network"
    assert throttle.unlock_account(storage, email, by="link") is True
    throttle.check_signin(storage, settings, email=email, ip=_stranger_ip(70), device=OWNER_DEVICE)
    throttle.check_signin(storage, settings, email=email, ip=OWNER_IP)
    throttle.check_signin(storage, settings, email=email, ip=_stranger_ip(71))
    # A second unlock moves on again: the count after the first one does not come back.
    for _ in range(5):
        throttle.record_failure(storage, settings, email, OWNER_IP, device=OWNER_DEVICE)
    throttle.unlock_account(storage, email)
    throttle.check_signin(storage, settings, email=email, ip=OWNER_IP, device=OWNER_DEVICE)
