"""`ami-auth providers …` and `check-config`, against a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.extensions import get_cipher
from app.models import AuditEvent, ProviderConfig, StoredSecret
from app.providers import configs
from app.vault import get_secret
from tests.support.live import free_port
from tests.support.op import OPClient, running_op

GOOGLE_SECRET = "GOCSPX-from-env-5a1e"
FILE_SECRET = "contract-secret-from-file-77"


def _write(tmp_path: Path, body: str, name: str = "providers.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def _run(app: Flask, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    runner = app.test_cli_runner()
    result = runner.invoke(args=list(args), env=env)
    return result.exit_code, result.output


def _count(db: Session, model: type) -> int:
    db.expire_all()
    return int(db.scalar(select(func.count()).select_from(model)) or 0)


def _file(tmp_path: Path) -> Path:
    secret_file = tmp_path / "oidc_secret"
    secret_file.write_text(FILE_SECRET + "\n")
    return _write(
        tmp_path,
        f"""
        providers:
          - name: Google (staff)
            type: google
            enabled: true
            config:
              client_id: 1234567890-abc.apps.googleusercontent.com
              client_secret: ${{env:GOOGLE_CLIENT_SECRET}}
              hosted_domain: example.com
          - name: Company SSO
            type: generic_oidc
            config:
              issuer: https://id.example.com
              discovery_url: https://id.example.com/.well-known/openid-configuration
              client_id: ami-auth
              client_secret: ${{file:{secret_file}}}
              scopes: [openid, email]
          - name: OpenAI
            type: openai
            config:
              rotation_days: 30
        """,
    )


def test_dry_run_prints_the_plan_and_writes_nothing(app: Flask, db: Session, tmp_path: Path) -> None:
    code, out = _run(
        app, "providers", "apply", str(_file(tmp_path)), "--dry-run", env={"GOOGLE_CLIENT_SECRET": GOOGLE_SECRET}
    )
    assert code == 0, out
    assert 'create google "Google (staff)"' in out
    assert "+ client_id: '1234567890-abc.apps.googleusercontent.com'" in out
    assert "+ client_secret: secret, set from ${env:GOOGLE_CLIENT_SECRET}" in out
    assert "+ enabled" in out
    assert "dry run: nothing was written" in out
    assert GOOGLE_SECRET not in out and FILE_SECRET not in out
    assert _count(db, ProviderConfig) == 0 and _count(db, StoredSecret) == 0


def test_apply_creates_encrypts_and_is_idempotent(app: Flask, db: Session, tmp_path: Path) -> None:
    env = {"GOOGLE_CLIENT_SECRET": GOOGLE_SECRET}
    path = _file(tmp_path)
    code, out = _run(app, "providers", "apply", str(path), env=env)
    assert code == 0, out
    assert "applied: 3 created, 0 updated, 0 unchanged" in out
    google = configs.find_by_name(db, "google (STAFF)")
    sso = configs.find_by_name(db, "Company SSO")
    assert google is not None and google.enabled and google.config["hosted_domain"] == "example.com"
    assert sso is not None and not sso.enabled and sso.config["scopes"] == ["openid", "email"]
    cipher = get_cipher(app)
    assert get_secret(db, cipher, configs.OWNER, google.id, "client_secret").reveal() == GOOGLE_SECRET  # type: ignore[union-attr]
    assert get_secret(db, cipher, configs.OWNER, sso.id, "client_secret").reveal() == FILE_SECRET  # type: ignore[union-attr]
    assert GOOGLE_SECRET not in str(google.config)
    events_before = _count(db, AuditEvent)
    # Same file again: nothing changes, nothing is written, nothing is audited.
    code, out = _run(app, "providers", "apply", str(path), env=env)
    assert code == 0 and "applied: 0 created, 0 updated, 3 unchanged" in out, out
    assert _count(db, AuditEvent) == events_before
    rows_before = _count(db, StoredSecret)
    # A rotated secret and a changed field are an update; the old secret is kept for the grace period.
    code, out = _run(app, "providers", "apply", str(path), env={"GOOGLE_CLIENT_SECRET": "GOCSPX-rotated"})
    assert code == 0, out
    assert "~ client_secret: secret, replace from ${env:GOOGLE_CLIENT_SECRET}" in out
    assert "GOCSPX-rotated" not in out
    assert get_secret(db, cipher, configs.OWNER, google.id, "client_secret").reveal() == "GOCSPX-rotated"  # type: ignore[union-attr]
    assert _count(db, StoredSecret) == rows_before + 1
    details = [e.details for e in db.scalars(select(AuditEvent).where(AuditEvent.action.like("provider_config.%")))]
    assert details and all(GOOGLE_SECRET not in str(d) and "GOCSPX-rotated" not in str(d) for d in details)


def test_a_missing_variable_names_file_provider_field_and_writes_nothing(
    app: Flask, db: Session, tmp_path: Path
) -> None:
    path = _file(tmp_path)
    code, out = _run(app, "providers", "apply", str(path), env={})
    assert code == 1
    assert (
        f"error: {path}: provider 'Google (staff)' (google): field client_secret: "
        "environment variable GOOGLE_CLIENT_SECRET is not set"
    ) in out
    assert "nothing was written" in out
    assert "This field is required" not in out  # one problem, said once
    assert _count(db, ProviderConfig) == 0  # not even the two providers that were fine


def test_literal_secrets_bad_fields_and_unreadable_files_are_refused(app: Flask, db: Session, tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        providers:
          - name: Pasted
            type: github
            config:
              client_id: Ov23liAbc
              client_secret: gho_pasted_value_123
          - name: Typos
            type: smtp
            config:
              host: smtp.example.com
              security: tls
              colour: blue
          - name: Missing file
            type: azure_ad
            config:
              client_id: 00000000-1111-2222-3333-444444444444
              client_secret: ${file:/nonexistent/secret}
          - name: Half a reference
            type: generic_api_key
            config:
              base_url: https://${env:API_HOST}/v1
          - name: Nope
            type: fax
        """,
    )
    code, out = _run(app, "providers", "apply", str(path))
    assert code == 1
    assert "provider 'Pasted' (github): field client_secret: secret fields take a reference" in out
    assert "gho_pasted_value_123" not in out
    assert "provider 'Typos' (smtp): field security: Choose one of" in out
    assert "provider 'Typos' (smtp): field colour: This is not a field of this provider type." in out
    assert "field client_secret: cannot read /nonexistent/secret: No such file or directory" in out
    assert "field base_url: a ${env:…}/${file:…} reference must be the whole value" in out
    assert "provider 'Nope': type 'fax' is not one of" in out
    assert _count(db, ProviderConfig) == 0


def test_enabling_in_a_file_needs_a_complete_config(app: Flask, db: Session, tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        providers:
          - name: Incomplete
            type: github
            enabled: true
            config:
              client_id: Ov23liAbc
        """,
    )
    code, out = _run(app, "providers", "apply", str(path))
    assert code == 1
    assert "provider 'Incomplete' (github): field client_secret: This field is required." in out
    assert _count(db, ProviderConfig) == 0


def _oidc_file(tmp_path: Path, issuer: str) -> Path:
    return _write(
        tmp_path,
        f"""
        providers:
          - name: Corp ID
            type: generic_oidc
            config:
              issuer: {issuer}
              client_id: ami-auth
              client_secret: ${{env:OIDC_SECRET}}
          - name: OpenAI
            type: openai
        """,
    )


def test_apply_test_checks_oidc_discovery_at_the_real_op_and_is_honest_about_api_keys(
    app: Flask, db: Session, tmp_path: Path
) -> None:
    env = {"OIDC_SECRET": "op-secret"}
    with running_op(clients=[OPClient("ami-auth", "op-secret")]) as op:
        code, out = _run(app, "providers", "apply", str(_oidc_file(tmp_path, op.issuer)), "--test", env=env)
        assert code == 0, out
        assert "test: ok: Discovery and the signing keys were fetched." in out
        assert "test: unavailable: nothing to test on the config alone" in out  # OpenAI: keys are per account
        code, out = _run(app, "providers", "test", "Corp ID")
        assert code == 0 and "Corp ID: ok" in out and f"Issuer: {op.issuer}" in out and "signing key(s)" in out
        issuer = op.issuer
    # The OP is gone: the same check now fails, names the field, and a file run with --test writes nothing.
    code, out = _run(app, "providers", "test", "Corp ID")
    assert code == 1 and "Corp ID: failed" in out
    before = _count(db, ProviderConfig)
    down = f"http://127.0.0.1:{free_port()}"
    code, out = _run(app, "providers", "apply", str(_oidc_file(tmp_path, down)), "--test", env=env)
    assert code != 0 and 'provider "Corp ID" (generic_oidc):' in out, out
    assert _count(db, ProviderConfig) == before
    kept = configs.find_by_name(db, "Corp ID")
    assert kept is not None and kept.config["issuer"] == issuer  # the failed run changed nothing


def test_list_show_enable_disable_and_test(app: Flask, db: Session, tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        providers:
          - name: Key API
            type: generic_api_key
            config:
              base_url: https://api.example.com
              auth_type: header
              header_name: X-Api-Key
        """,
    )
    assert _run(app, "providers", "apply", str(path))[0] == 0
    cfg = configs.find_by_name(db, "Key API")
    assert cfg is not None
    code, out = _run(app, "providers", "list")
    assert code == 0 and "generic_api_key" in out and "Key API" in out and " no " in out
    code, out = _run(app, "providers", "show", "Key API")
    assert code == 0 and "header_name: X-Api-Key" in out and "query_param" in out
    code, out = _run(app, "providers", "enable", str(cfg.id))
    assert code == 0 and "Key API: enabled" in out
    db.expire_all()
    assert db.get(ProviderConfig, cfg.id).enabled  # type: ignore[union-attr]
    code, out = _run(app, "providers", "test", "Key API")
    assert code == 3 and "unavailable: nothing to test on the config alone" in out
    code, out = _run(app, "providers", "disable", "Key API")
    assert code == 0 and "Key API: disabled" in out
    code, out = _run(app, "providers", "show", "999")
    assert code == 1 and "no such provider config" in out


def test_enable_refuses_an_incomplete_config_and_check_config_reports_it(app: Flask, db: Session) -> None:
    cfg = ProviderConfig(
        provider_type="google", name="Half done", config={"client_id": "1-a.apps.googleusercontent.com"}
    )
    db.add(cfg)
    db.commit()
    code, out = _run(app, "providers", "enable", "Half done")
    assert code == 1 and "cannot be enabled" in out and "Missing or invalid: Client secret." in out
    refused = db.scalars(select(AuditEvent).where(AuditEvent.action == "provider_config.enable")).one()
    assert refused.outcome == "failure" and refused.details["missing"] == ["client_secret"]
    # Enabled behind the console's back (or by an older catalog): check-config says so.
    cfg.enabled = True
    db.commit()
    code, out = _run(app, "check-config")
    assert code == 1
    assert f"provider config 'Half done' (#{cfg.id}, google): enabled, but missing or invalid: Client secret" in out


def test_check_config_reports_a_secret_the_keys_cannot_read(app: Flask, db: Session) -> None:
    from app.settings import MasterKey
    from app.vault import Cipher, put_secret

    cfg = ProviderConfig(
        provider_type="github", name="Old key", enabled=True, config={"client_id": "Ov23liAbc", "scopes": ["read:user"]}
    )
    db.add(cfg)
    db.flush()
    foreign = Cipher((MasterKey("gone", b"g" * 32),))  # a master key this deployment no longer has
    put_secret(db, foreign, configs.OWNER, cfg.id, "client_secret", "s", grace=None)
    db.commit()
    code, out = _run(app, "check-config")
    assert code == 1
    assert f"provider config 'Old key' (#{cfg.id}, github): A stored secret on key 'gone' could not be decrypted" in out
    code, out = _run(app, "providers", "test", "Old key")
    assert code == 1 and "could not be decrypted" in out
