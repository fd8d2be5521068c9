"""The vault against real AES-GCM and a real SQLite file (no mocks of the crypto or the database)."""

from __future__ import annotations

import base64
import copy
import logging
import pickle
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from flask import Flask
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

import app.vault as vault
from app import audit, create_app
from app.errors import AppError
from app.extensions import Database, get_database, make_database
from app.migrate import upgrade
from app.models import StoredSecret
from app.settings import (
    MasterKey,
    Settings,
    dev_key_file,
    format_master_keys,
    new_master_key,
    parse_master_keys,
    save_dev_master_keys,
)
from app.vault import (
    Cipher,
    Envelope,
    Secret,
    SecretUnreadable,
    aad_for,
    delete_secrets,
    get_secret,
    has_secret,
    key_status,
    purge_retired,
    put_secret,
    restore_previous,
    rewrap,
    rewrap_pending,
    secret_meta,
)

K1 = new_master_key("k1")
K2 = new_master_key("k2")
K3 = new_master_key("k3")
AAD = aad_for("provider_config", 7, "client_secret")
GRACE = timedelta(days=7)


def key_texts(key: MasterKey) -> list[bytes]:
    """Every form key material could leak in: raw bytes, base64 and hex."""
    return [key.key, base64.b64encode(key.key), key.key.hex().encode()]


# --- Secret -----------------------------------------------------------------------------------


def test_secret_hides_its_value_in_every_text_form(caplog: pytest.LogCaptureFixture) -> None:
    s = Secret("hunter2-api-key")
    assert repr(s) == "Secret('**********')"
    assert str(s) == "**********"
    assert f"{s}" == "**********"
    assert f"{s!r} {s:>30}" == "Secret('**********') **********"
    # The older formatting styles are what logging and legacy code use, so they are tested on purpose.
    assert "{}".format(s) == format(s, "") == "**********"  # noqa: UP032
    assert "%s %r" % (s, s) == "********** Secret('**********')"  # noqa: UP031
    assert "hunter2" not in repr([s, {"k": s}])
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("token %s in %r", s, {"s": s})
    assert "hunter2" not in caplog.text
    assert s.reveal() == "hunter2-api-key"


def test_secret_equality_is_by_value_and_only_with_secrets() -> None:
    assert Secret("abc") == Secret("abc")
    assert Secret("abc") != Secret("abd")
    assert Secret("abc") != Secret("abcd")
    assert Secret("abc") != "abc"  # comparing to a plain str is almost always a bug: never equal
    assert bool(Secret("x")) and not Secret("")


def test_secret_is_immutable_unhashable_and_not_picklable() -> None:
    s = Secret("value")
    with pytest.raises(AttributeError):
        s._value = "other"
    with pytest.raises(TypeError):
        hash(s)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(s)
    assert copy.copy(s) is s and copy.deepcopy({"a": s})["a"] is s
    with pytest.raises(TypeError):
        Secret(b"bytes")  # type: ignore[arg-type]


# --- Cipher -----------------------------------------------------------------------------------


def test_round_trip_and_envelope_shape() -> None:
    cipher = Cipher((K1,))
    env = cipher.encrypt(b"s3cret", AAD)
    assert (env.key_id, env.version) == ("k1", 1)
    assert len(env.wrapped_key) == 12 + 32 + 16
    assert len(env.ciphertext) == 12 + len(b"s3cret") + 16
    assert cipher.decrypt(env, AAD) == b"s3cret"
    again = cipher.encrypt(b"s3cret", AAD)
    assert again.ciphertext != env.ciphertext and again.wrapped_key != env.wrapped_key
    assert "s3cret" not in repr(env) and env.ciphertext.hex() not in repr(env)


def test_envelope_uses_standard_aes_gcm_layout() -> None:
    """An independent raw AESGCM decrypt agrees with the documented layout (nonce || ct+tag)."""
    env = Cipher((K1,)).encrypt(b"payload", AAD)
    wrap_aad = AAD + b"k1" + bytes([2])
    dek = AESGCM(K1.key).decrypt(env.wrapped_key[:12], env.wrapped_key[12:], wrap_aad)
    assert AESGCM(dek).decrypt(env.ciphertext[:12], env.ciphertext[12:], AAD) == b"payload"


def test_stored_format_is_pinned() -> None:
    """Rows written today must decrypt after any refactor: the AAD bytes and layout are a storage format."""
    assert aad_for("account", 7, "api_key") == (
        b"\x00\x00\x00\x13ami-auth/secrets/v1\x00\x00\x00\x07account\x00\x00\x00\x017\x00\x00\x00\x07api_key"
    )
    master = MasterKey("k2024", bytes(range(32)))
    dek = bytes(range(32, 64))
    aad = aad_for("account", 7, "api_key")
    wrap_nonce, payload_nonce = b"\x01" * 12, b"\x02" * 12
    wrapped = wrap_nonce + AESGCM(master.key).encrypt(wrap_nonce, dek, aad + b"k2024\x05")
    ciphertext = payload_nonce + AESGCM(dek).encrypt(payload_nonce, b"known answer", aad)
    env = Envelope("k2024", 1, wrapped, ciphertext)
    assert Cipher((master,)).decrypt(env, aad) == b"known answer"


def test_wrong_aad_is_unreadable() -> None:
    cipher = Cipher((K1,))
    env = cipher.encrypt(b"v", AAD)
    with pytest.raises(SecretUnreadable):
        cipher.decrypt(env, aad_for("provider_config", 8, "client_secret"))
    with pytest.raises(SecretUnreadable):
        cipher.rewrap(env, aad_for("provider_config", 7, "other_field"))


def test_wrong_key_is_unreadable_and_the_error_names_only_the_key_id() -> None:
    env = Cipher((K1,)).encrypt(b"v", AAD)
    impostor = MasterKey("k1", new_master_key("x").key)
    with pytest.raises(SecretUnreadable) as caught:
        Cipher((impostor,)).decrypt(env, AAD)
    err = caught.value
    assert isinstance(err, AppError) and err.code == "secret_unreadable" and err.http_status == 500
    assert err.key_id == "k1" and "'k1'" in err.text
    rendered = f"{err} {err!r} {err.to_dict()}".encode()
    for leaked in key_texts(K1) + key_texts(impostor):
        assert leaked not in rendered
    assert "k1" in str(pickle.loads(pickle.dumps(err)))


def test_unknown_key_id_is_unreadable() -> None:
    env = Cipher((K1,)).encrypt(b"v", AAD)
    with pytest.raises(SecretUnreadable, match=r"'k1'.*not configured"):
        Cipher((K2,)).decrypt(env, AAD)


@pytest.mark.parametrize("part", ["ciphertext", "wrapped_key"])
@pytest.mark.parametrize("where", [0, 12, -1])  # nonce, body, tag
def test_tampered_bytes_are_unreadable(part: str, where: int) -> None:
    cipher = Cipher((K1,))
    env = cipher.encrypt(b"some value", AAD)
    data = bytearray(getattr(env, part))
    data[where] ^= 0x01
    tampered = replace(env, ciphertext=bytes(data)) if part == "ciphertext" else replace(env, wrapped_key=bytes(data))
    with pytest.raises(SecretUnreadable):
        cipher.decrypt(tampered, AAD)


@pytest.mark.parametrize("part", ["ciphertext", "wrapped_key"])
def test_truncated_bytes_are_unreadable(part: str) -> None:
    cipher = Cipher((K1,))
    env = cipher.encrypt(b"v", AAD)
    for size in (0, 5, 27):
        with pytest.raises(SecretUnreadable):
            cipher.decrypt(replace(env, **{part: getattr(env, part)[:size]}), AAD)


def test_relabelled_key_id_or_version_is_unreadable() -> None:
    cipher = Cipher((K1, K2))
    env = Cipher((K2,)).encrypt(b"v", AAD)
    relabelled = Envelope("k1", env.version, env.wrapped_key, env.ciphertext)
    with pytest.raises(SecretUnreadable):
        cipher.decrypt(relabelled, AAD)
    with pytest.raises(SecretUnreadable, match="version 2"):
        cipher.decrypt(Envelope(env.key_id, 2, env.wrapped_key, env.ciphertext), AAD)


def test_rewrap_moves_to_active_key_without_touching_the_payload() -> None:
    old = Cipher((K1,)).encrypt(b"value", AAD)
    new = Cipher((K2, K1)).rewrap(old, AAD)
    assert new.key_id == "k2" and new.ciphertext == old.ciphertext and new.wrapped_key != old.wrapped_key
    assert Cipher((K2,)).decrypt(new, AAD) == b"value"


def test_cipher_rejects_bad_key_rings_and_hides_keys_in_repr() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Cipher(())
    with pytest.raises(ValueError, match="twice"):
        Cipher((K1, MasterKey("k1", K2.key)))
    with pytest.raises(ValueError, match="32 bytes"):
        Cipher((MasterKey("short", b"x" * 16),))
    cipher = Cipher((K2, K1))
    assert (cipher.active_kid, cipher.key_ids) == ("k2", ("k2", "k1"))
    assert not any(t.decode("latin-1") in repr(cipher) for t in key_texts(K1) + key_texts(K2))


def test_aad_distinguishes_every_slot() -> None:
    slots = [
        ("a", 1, "bc"),
        ("ab", 1, "c"),
        ("a", 11, "c"),
        ("a", 1, "1c"),
        ("provider_config", 7, "client_secret"),
    ]
    assert len({aad_for(*slot) for slot in slots}) == len(slots)


# --- Store (SQLite file) ----------------------------------------------------------------------


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 'vault.db'}"
    upgrade(url)
    database = make_database(url)
    yield database
    database.remove()
    database.engine.dispose()


def _put(database: Database, cipher: Cipher, owner_id: int, value: str, field: str = "api_key") -> StoredSecret:
    with database.session() as session, session.begin():
        return put_secret(session, cipher, "account", owner_id, field, value, grace=GRACE)


def _get(database: Database, cipher: Cipher, owner_id: int, field: str = "api_key") -> str | None:
    with database.session() as session:
        found = get_secret(session, cipher, "account", owner_id, field)
        return None if found is None else found.reveal()


def test_store_round_trip_and_meta(database: Database) -> None:
    cipher = Cipher((K1,))
    assert _get(database, cipher, 1) is None
    with database.session() as session, session.begin():
        assert not has_secret(session, "account", 1, "api_key")
        assert secret_meta(session, "account", 1, "api_key") is None
        when = datetime(2024, 5, 1, 12, tzinfo=UTC)
        put_secret(session, cipher, "account", 1, "api_key", Secret("sk-live-1"), grace=GRACE, now=when)
    assert _get(database, cipher, 1) == "sk-live-1"
    with database.session() as session:
        assert has_secret(session, "account", 1, "api_key")
        assert not has_secret(session, "account", 1, "other")
        meta = secret_meta(session, "account", 1, "api_key")
    assert meta is not None and meta.key_id == "k1" and meta.created_at == when
    _put(database, cipher, 1, "sk-live-2 ✓ ünïcode")
    assert _get(database, cipher, 1) == "sk-live-2 ✓ ünïcode"


def test_put_with_grace_retires_and_restore_previous_rolls_back(database: Database) -> None:
    cipher = Cipher((K1,))
    now = datetime(2024, 5, 1, tzinfo=UTC)
    with database.session() as session, session.begin():
        put_secret(session, cipher, "account", 1, "api_key", "v1", grace=GRACE, now=now)
        put_secret(session, cipher, "account", 1, "api_key", "v2", grace=GRACE, now=now + timedelta(hours=1))
        put_secret(session, cipher, "account", 1, "api_key", "v3", grace=GRACE, now=now + timedelta(hours=2))
    with database.session() as session:
        rows = session.scalars(select(StoredSecret).order_by(StoredSecret.id)).all()
        assert [r.retired_at is None for r in rows] == [False, False, True]
        assert rows[0].purge_after == now + timedelta(hours=1) + GRACE
    assert _get(database, cipher, 1) == "v3"
    with database.session() as session, session.begin():
        restored = restore_previous(session, "account", 1, "api_key")
        assert restored is not None and restored.retired_at is None
    assert _get(database, cipher, 1) == "v2"
    with database.session() as session, session.begin():
        assert restore_previous(session, "account", 1, "api_key") is not None
    assert _get(database, cipher, 1) == "v1"
    with database.session() as session, session.begin():
        assert restore_previous(session, "account", 1, "api_key") is None
        assert key_status(session) == {"k1": 1}
    assert _get(database, cipher, 1) == "v1"


def test_put_without_grace_deletes_the_old_value(database: Database) -> None:
    cipher = Cipher((K1,))
    with database.session() as session, session.begin():
        put_secret(session, cipher, "account", 1, "api_key", "v1", grace=None)
        put_secret(session, cipher, "account", 1, "api_key", "v2", grace=None)
        assert key_status(session) == {"k1": 1}
        assert restore_previous(session, "account", 1, "api_key") is None
        with pytest.raises(ValueError, match="negative"):
            put_secret(session, cipher, "account", 1, "api_key", "v3", grace=-GRACE)
    assert _get(database, cipher, 1) == "v2"


def test_swapped_row_is_unreadable_and_the_original_still_reads(database: Database) -> None:
    cipher = Cipher((K1,))
    a = _put(database, cipher, 1, "value-of-A")
    _put(database, cipher, 2, "value-of-B")
    _put(database, cipher, 1, "other-field-of-A", field="webhook_secret")
    with database.session() as session, session.begin():
        for owner_id, field in [(2, "api_key"), (1, "webhook_secret")]:
            session.execute(
                update(StoredSecret)
                .where((StoredSecret.owner_id == owner_id) & (StoredSecret.field == field))
                .values(ciphertext=a.ciphertext, wrapped_key=a.wrapped_key)
            )
    with pytest.raises(SecretUnreadable):
        _get(database, cipher, 2)
    with pytest.raises(SecretUnreadable):
        _get(database, cipher, 1, field="webhook_secret")
    assert _get(database, cipher, 1) == "value-of-A"


def test_unknown_key_id_in_a_row_is_unreadable(database: Database) -> None:
    _put(database, Cipher((K1,)), 1, "v")
    with pytest.raises(SecretUnreadable, match="'k1'"):
        _get(database, Cipher((K2,)), 1)


def test_purge_retired_deletes_only_expired_retired_rows(database: Database) -> None:
    cipher = Cipher((K1,))
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    with database.session() as session, session.begin():
        # Owner 1: retired at t0 with 1 day grace (expires t0+1d), then retired again at t0+5d (7 days).
        put_secret(session, cipher, "account", 1, "f", "a1", grace=timedelta(days=1), now=t0)
        put_secret(session, cipher, "account", 1, "f", "a2", grace=timedelta(days=1), now=t0)
        put_secret(session, cipher, "account", 1, "f", "a3", grace=timedelta(days=7), now=t0 + timedelta(days=5))
        # Owner 2: only a current value, set long ago.
        put_secret(session, cipher, "account", 2, "f", "b1", grace=timedelta(0), now=t0)
    with database.session() as session, session.begin():
        assert purge_retired(session, t0) == 0
        assert purge_retired(session, t0 + timedelta(days=1)) == 1  # a1: purge_after reached exactly
        assert purge_retired(session, t0 + timedelta(days=11)) == 0  # a2 runs to t0+12d
        assert purge_retired(session, t0 + timedelta(days=365)) == 1
        assert purge_retired(session, t0 + timedelta(days=365)) == 0
    with database.session() as session:
        assert key_status(session) == {"k1": 2}
    assert (_get(database, cipher, 1, "f"), _get(database, cipher, 2, "f")) == ("a3", "b1")


def test_delete_secrets_leaves_no_ciphertext_in_the_database_file(database: Database, tmp_path: Path) -> None:
    cipher = Cipher((K1,))
    doomed = [
        _put(database, cipher, 1, "first"),
        _put(database, cipher, 1, "second"),
        _put(database, cipher, 1, "x", field="other"),
    ]
    kept = _put(database, cipher, 2, "kept")
    path = tmp_path / "vault.db"

    def file_bytes() -> bytes:
        database.remove()
        with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM"))
            conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
        wal = path.with_name(path.name + "-wal")
        return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")

    before = file_bytes()
    assert all(row.ciphertext in before and row.wrapped_key in before for row in [*doomed, kept])
    with database.session() as session, session.begin():
        assert delete_secrets(session, "account", 1) == 3
    after = file_bytes()
    for row in doomed:
        assert row.ciphertext not in after and row.wrapped_key not in after
    assert kept.ciphertext in after
    assert _get(database, cipher, 2) == "kept" and _get(database, cipher, 1) is None


def _fill(database: Database, cipher: Cipher, count: int, start: int = 0) -> dict[int, str]:
    """``count`` owners with one current value each, plus a retired value for every tenth."""
    expected: dict[int, str] = {}
    with database.session() as session, session.begin():
        for owner_id in range(start, start + count):
            if owner_id % 10 == 0:
                put_secret(session, cipher, "account", owner_id, "api_key", f"old-{owner_id}", grace=GRACE)
            expected[owner_id] = f"value-{owner_id}"
            put_secret(session, cipher, "account", owner_id, "api_key", expected[owner_id], grace=GRACE)
    return expected


def _assert_all_readable(database: Database, cipher: Cipher, expected: dict[int, str]) -> None:
    with database.session() as session:
        for owner_id, value in expected.items():
            found = get_secret(session, cipher, "account", owner_id, "api_key")
            assert found is not None and found.reveal() == value


def _ciphertexts(session: Session) -> dict[int, bytes]:
    return {row.id: row.ciphertext for row in session.execute(select(StoredSecret.id, StoredSecret.ciphertext))}


def test_rotate_and_rewrap_moves_every_row_and_keeps_it_readable(database: Database) -> None:
    expected = _fill(database, Cipher((K1,)), 300)
    with database.session() as session:
        before = _ciphertexts(session)
        stamps = {row.id: row.updated_at for row in session.execute(select(StoredSecret.id, StoredSecret.updated_at))}
        assert key_status(session) == {"k1": 330}
    rotated = Cipher((K2, K1))
    _assert_all_readable(database, rotated, expected)  # old rows read fine before any rewrap
    with database.session() as session:
        assert rewrap_pending(session, rotated) == 330
    batches: list[int] = []
    assert rewrap(database.session, rotated, batch_size=100, progress=batches.append) == 330
    assert batches == [100, 100, 100, 30]
    with database.session() as session:
        assert key_status(session) == {"k2": 330}
        assert _ciphertexts(session) == before  # only the wrapped keys changed
        # The value did not change, so neither does its "last changed" time.
        assert {
            row.id: row.updated_at for row in session.execute(select(StoredSecret.id, StoredSecret.updated_at))
        } == stamps
        # The retired values moved too, so a rollback still works after the old key is removed.
        restored = restore_previous(session, "account", 0, "api_key")
        assert restored is not None
        session.rollback()
    only_new = Cipher((K2,))
    _assert_all_readable(database, only_new, expected)
    assert rewrap(database.session, rotated) == 0


def test_rewrap_from_several_old_keys(database: Database) -> None:
    expected = _fill(database, Cipher((K1,)), 40) | _fill(database, Cipher((K2, K1)), 40, start=40)
    ring = Cipher((K3, K2, K1))
    assert rewrap(database.session, ring, batch_size=7) == 88
    with database.session() as session:
        assert key_status(session) == {"k3": 88}
    _assert_all_readable(database, Cipher((K3,)), expected)


class Interrupt(Exception):
    pass


def test_interrupted_rewrap_is_consistent_and_a_second_run_completes(database: Database) -> None:
    expected = _fill(database, Cipher((K1,)), 250)
    rotated = Cipher((K2, K1))

    def stop(count: int) -> None:
        raise Interrupt(count)

    with pytest.raises(Interrupt):
        rewrap(database.session, rotated, batch_size=100, progress=stop)
    with database.session() as session:
        assert key_status(session) == {"k1": 175, "k2": 100}
    _assert_all_readable(database, rotated, expected)
    assert rewrap(database.session, rotated, batch_size=100) == 175
    with database.session() as session:
        assert key_status(session) == {"k2": 275}
    _assert_all_readable(database, Cipher((K2,)), expected)


def test_rewrap_stops_at_an_unreadable_row_and_keeps_earlier_batches(database: Database) -> None:
    _fill(database, Cipher((K1,)), 30)
    lost = _put(database, Cipher((K3,)), 999, "on a key nobody has")
    with pytest.raises(SecretUnreadable, match="'k3'") as caught:
        rewrap(database.session, Cipher((K2, K1)), batch_size=10)
    assert f"secrets row id {lost.id}" in caught.value.__notes__
    with database.session() as session:
        assert key_status(session) == {"k1": 3, "k2": 30, "k3": 1}


# --- CLI --------------------------------------------------------------------------------------


@pytest.fixture
def instance(tmp_path: Path) -> Path:
    path = tmp_path / "instance"
    upgrade(f"sqlite:///{path / 'ami-auth.db'}")
    return path


def _app(instance: Path, keys: tuple[MasterKey, ...], env: str = "development") -> Flask:
    """The real app factory, so the test also covers how app/cli.py registers the group."""
    settings = Settings(
        env=env,  # type: ignore[arg-type]
        instance_dir=instance,
        database_url=f"sqlite:///{instance / 'ami-auth.db'}",
        secret_key="s" * 48,
        master_keys=keys,
        scheduler=False,
    )
    return create_app(settings)


@pytest.fixture
def dispose() -> Iterator[list[Flask]]:
    apps: list[Flask] = []
    yield apps
    for app in apps:
        get_database(app).engine.dispose()


def _seed(instance: Path, keys: tuple[MasterKey, ...], count: int, start: int = 0) -> None:
    database = make_database(f"sqlite:///{instance / 'ami-auth.db'}")
    with database.session() as session, session.begin():
        for owner_id in range(start, start + count):
            put_secret(session, Cipher(keys), "account", owner_id, "api_key", f"v{owner_id}", grace=None)
    database.engine.dispose()


def test_cli_status_marks_missing_keys(instance: Path, dispose: list[Flask]) -> None:
    _seed(instance, (K1,), 3)
    _seed(instance, (K3,), 2, start=100)
    app = _app(instance, (K2, K1))
    dispose.append(app)
    result = app.test_cli_runner().invoke(args=["keys", "status"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "Active key: k2"
    assert any(line.split()[:3] == ["k2", "0", "active"] for line in lines)
    assert any(line.split()[:3] == ["k1", "3", "configured"] for line in lines)
    assert any(line.split()[:3] == ["k3", "2", "MISSING:"] for line in lines)
    assert "5 row(s) are not on the active key" in result.output


def test_cli_add_and_rotate_in_development_write_the_dev_key_file(instance: Path, dispose: list[Flask]) -> None:
    save_dev_master_keys(instance, (K1,))
    app = _app(instance, (K1,))
    dispose.append(app)
    result = app.test_cli_runner().invoke(args=["keys", "add", "--kid", "staged"])
    assert result.exit_code == 0, result.output
    keys = parse_master_keys(dev_key_file(instance).read_text())
    assert [k.kid for k in keys] == ["k1", "staged"] and keys[0] == K1
    assert "staged" in result.output and not any(t.decode() in result.output for t in key_texts(keys[1])[1:])

    app = _app(instance, keys)
    dispose.append(app)
    result = app.test_cli_runner().invoke(args=["keys", "rotate"])
    assert result.exit_code == 0, result.output
    rotated = parse_master_keys(dev_key_file(instance).read_text())
    assert [k.kid for k in rotated][1:] == ["k1", "staged"] and rotated[0].kid.startswith("k20")
    assert "AMI_AUTH_MASTER_KEYS=" not in result.output
    assert not any(t.decode() in result.output for t in key_texts(rotated[0])[1:])

    result = app.test_cli_runner().invoke(args=["keys", "add", "--kid", "k1"])
    assert result.exit_code == 2 and "already configured" in result.output
    result = app.test_cli_runner().invoke(args=["keys", "add", "--kid", "bad kid!"])
    assert result.exit_code == 2 and "letters, digits" in result.output


def test_cli_rotate_outside_development_prints_only_the_variable_line(instance: Path, dispose: list[Flask]) -> None:
    app = _app(instance, (K1,), env="production")
    dispose.append(app)
    result = app.test_cli_runner().invoke(args=["keys", "rotate", "--kid", "prod2"])
    assert result.exit_code == 0, result.output
    assert not dev_key_file(instance).exists()
    (line,) = result.stdout.splitlines()
    name, _, value = line.partition("=")
    assert name == "AMI_AUTH_MASTER_KEYS"
    keys = parse_master_keys(value)
    assert [k.kid for k in keys] == ["prod2", "k1"] and keys[1] == K1
    assert format_master_keys(keys) == value
    assert "prod2" in result.stderr and "AMI_AUTH_MASTER_KEYS" in result.stderr
    with get_database(app).session() as session:
        (event,) = audit.query(session, action="keys.rotated")
        assert (event.target, event.details) == ("master_key:prod2", {"stored": "printed"})
    assert not any(t.decode() in result.stderr for t in key_texts(keys[0])[1:] + key_texts(K1)[1:])


def test_cli_rewrap_moves_rows_and_refuses_with_missing_keys(instance: Path, dispose: list[Flask]) -> None:
    _seed(instance, (K1,), 12)
    app = _app(instance, (K2, K1))
    dispose.append(app)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["keys", "rewrap", "--batch-size", "5"])
    assert result.exit_code == 0, result.output
    assert "Moved 12 row(s) to key 'k2'." in result.output
    with get_database(app).session() as session:
        (event,) = audit.query(session, action="keys.rewrapped")
        assert (event.outcome, event.actor, event.details) == ("success", "cli", {"moved": 12})
    result = runner.invoke(args=["keys", "rewrap"])
    assert result.exit_code == 0 and "Nothing to do" in result.output

    _seed(instance, (K3,), 1, start=100)
    result = runner.invoke(args=["keys", "rewrap"])
    assert result.exit_code == 1 and "k3" in result.output and "not in AMI_AUTH_MASTER_KEYS" in result.output


def test_cli_rewrap_names_the_row_it_cannot_unwrap(instance: Path, dispose: list[Flask]) -> None:
    _seed(instance, (K1,), 12)
    app = _app(instance, (K2, K1))
    dispose.append(app)
    database = get_database(app)
    with database.session() as session, session.begin():
        session.execute(update(StoredSecret).where(StoredSecret.id == 9).values(wrapped_key=b"\0" * 60))
    result = app.test_cli_runner().invoke(args=["keys", "rewrap", "--batch-size", "4"])
    assert result.exit_code == 1
    assert "'k1'" in result.output and "secrets row id 9" in result.output
    assert "8 row(s) were moved before it" in result.output
    with database.session() as session:
        assert key_status(session) == {"k1": 4, "k2": 8}
        (event,) = audit.query(session, action="keys.rewrapped")
    assert (event.outcome, event.target, event.details) == (
        "failure",
        "master_key:k2",
        {"moved": 8, "stopped": "unreadable row"},
    )


def test_cli_writes_no_dev_file_when_the_variable_is_set(
    instance: Path, dispose: list[Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    save_dev_master_keys(instance, (K1,))
    monkeypatch.setenv("AMI_AUTH_MASTER_KEYS", format_master_keys((K1,)))
    app = _app(instance, (K1,))
    dispose.append(app)
    result = app.test_cli_runner().invoke(args=["keys", "add", "--kid", "next"])
    assert result.exit_code == 0, result.output
    assert parse_master_keys(dev_key_file(instance).read_text()) == (K1,)
    assert result.stdout.startswith("AMI_AUTH_MASTER_KEYS=k1:")


def test_public_names_are_pinned() -> None:
    assert sorted(vault.__all__) == [
        "Cipher",
        "Envelope",
        "Secret",
        "SecretMeta",
        "SecretUnreadable",
        "SessionFactory",
        "aad_for",
        "delete_secrets",
        "get_secret",
        "has_secret",
        "key_status",
        "purge_retired",
        "put_secret",
        "restore_previous",
        "rewrap",
        "rewrap_pending",
        "secret_meta",
        "unopened_keys",
    ]
