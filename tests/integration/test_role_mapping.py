"""Roles from the identity provider's groups claim (a config's ``role_mapping``), against the real OP: a JIT
account gets its role from its groups, a later sign-in follows a change of groups, the last admin is never
demoted that way, and every change is audited. SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import AuditEvent, User
from tests.conftest import UserFactory
from tests.support.oauth_app import create_config, follow_callback, generic_values, location
from tests.support.op import OPClient, OpenIDProvider, op_login, running_op

BASE = "http://127.0.0.1:5000"  # the test settings' AMI_AUTH_BASE_URL
ACCOUNTS = {
    "ivy": {"email": "ivy@corp.example", "email_verified": True, "name": "Ivy", "groups": ["ami-admins", "staff"]},
    "jon": {"email": "jon@corp.example", "email_verified": True, "name": "Jon", "groups": ["staff"]},
    "kim": {"email": "kim@corp.example", "email_verified": True, "name": "Kim", "groups": "staff"},
}
CLAIMS = {"openid": ["sub"], "email": ["email", "email_verified"], "profile": ["name", "groups"]}
MAPPING = ["ami-admins=admin", "staff=member"]


@pytest.fixture(scope="module")
def op() -> Iterator[OpenIDProvider]:
    client = OPClient(
        "ami-auth", "op-secret", extra={"redirect_uris": [f"{BASE}/oauth/{i}/callback" for i in range(1, 3)]}
    )
    with running_op(clients=[client], accounts=ACCOUNTS, claims=CLAIMS) as provider:
        yield provider


def _config(app: Flask, op: OpenIDProvider, **extra: object) -> int:
    values = generic_values(op.issuer, op.client, jit=True, trust_email=True, groups_claim="groups", **extra)
    return create_config(app, "generic_oidc", "Corp ID", values)


def _sign_in(app: Flask, config_id: int, login: str) -> FlaskClient:
    client = app.test_client()
    start = client.get(f"/oauth/{config_id}/login?next=/account/")
    done = follow_callback(client, op_login(location(start), login))
    assert done.status_code == 302 and location(done) == "/account/", done.get_data(as_text=True)[:300]
    return client


def _role(db: Session, email: str) -> str:
    db.expire_all()
    user = db.scalar(select(User).where(User.email == email))
    assert user is not None
    return user.role


def _mapped(db: Session) -> list[AuditEvent]:
    return list(db.scalars(select(AuditEvent).where(AuditEvent.action == "user.role_mapped").order_by(AuditEvent.id)))


def test_groups_decide_the_role_at_jit_and_at_every_sign_in(
    app: Flask, db: Session, op: OpenIDProvider, make_user: UserFactory
) -> None:
    make_user("root@example.com", role="admin")  # another admin: demoting Ivy later is allowed
    op.set_claims("ivy", ACCOUNTS["ivy"])  # the OP outlives one database run
    config_id = _config(app, op, role_mapping=MAPPING)
    _sign_in(app, config_id, "ivy")
    assert _role(db, "ivy@corp.example") == "admin"
    _sign_in(app, config_id, "jon")
    assert _role(db, "jon@corp.example") == "member"
    [event] = _mapped(db)  # Jon was created a member: nothing changed, nothing recorded
    assert event.outcome == "success"
    assert event.details == {
        "from": "member",
        "to": "admin",
        "provider_config": config_id,
        "groups": ["ami-admins", "staff"],
    }

    # The directory drops Ivy from ami-admins: the next sign-in follows.
    op.set_claims("ivy", {**ACCOUNTS["ivy"], "groups": ["staff"]})
    _sign_in(app, config_id, "ivy")
    assert _role(db, "ivy@corp.example") == "member"
    assert _mapped(db)[-1].details["to"] == "member"


def test_the_last_admin_is_not_demoted_by_a_groups_claim(
    app: Flask, db: Session, op: OpenIDProvider, make_user: UserFactory
) -> None:
    make_user("kim@corp.example", role="admin")
    config_id = _config(app, op, role_mapping=MAPPING)
    _sign_in(app, config_id, "kim")  # a plain string claim counts as one group
    assert _role(db, "kim@corp.example") == "admin"
    [event] = _mapped(db)
    assert event.outcome == "denied" and event.details["reason"] == "last_admin"


def test_without_a_mapping_the_groups_change_nothing(
    app: Flask, db: Session, op: OpenIDProvider, make_user: UserFactory
) -> None:
    make_user("jon@corp.example", role="admin")
    make_user("root@example.com", role="admin")
    config_id = _config(app, op)
    _sign_in(app, config_id, "jon")
    assert _role(db, "jon@corp.example") == "admin"
    assert _mapped(db) == []
