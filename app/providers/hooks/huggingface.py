"""Hugging Face: what `GET /api/whoami-v2` says about a token, and whether it is enough for this account.

https://huggingface.co/docs/hub/security-tokens — a token's role is ``read``, ``write`` or ``fineGrained``.
A fine-grained token lists its permissions (``repo.content.read``, ``repo.write``, ``inference.serverless.write``
…) under ``fineGrained.global`` and per entity under ``fineGrained.scoped[]`` (``entity: {type: user|org|model|
dataset|space, name}``). whoami-v2 also lists the user's ``orgs[]`` with ``roleInOrg``.

What the account asks for is checked against that, not only the role:

* ``required_role``: ``write`` needs a write token, or a fine-grained one with ``repo.write`` somewhere.
* ``organization``: the token's user must belong to it; for ``write`` with a read/write token the user's
  role in the org must be ``admin`` or ``write``; a fine-grained token needs the permission on the org.
* ``default_repo`` / ``space``: a fine-grained token needs ``repo.content.read`` (``repo.write`` for
  ``write``) on that repository or on its owner; a write token must belong to the owner (or an org where
  the user can write).
* ``required_permissions``: each must be granted — by a fine-grained token for the org/repositories above
  (or globally); a ``write`` token holds them all, a ``read`` token only ``*.read`` ones.

Every shortfall blames its own field in one ``permission_denied``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.errors import AppError
from app.i18n import gettext as _
from app.providers.entries import ProviderEntry
from app.providers.verify_context import VerifyContext, rate_limit_info

TOKENS_URL = "https://huggingface.co/settings/tokens"
_REPO_TYPES = frozenset({"model", "dataset", "space"})
_ORG_WRITERS = frozenset({"admin", "write"})


def _grants(fine_grained: Any) -> tuple[set[str], list[tuple[str, str, set[str]]]]:
    """(global permissions, [(entity type, entity name, permissions)]) of a fine-grained token."""
    if not isinstance(fine_grained, dict):
        return set(), []
    glob = {p for p in fine_grained.get("global") or [] if isinstance(p, str)}
    scoped = []
    for item in fine_grained.get("scoped") or []:
        entity = item.get("entity") if isinstance(item, dict) else None
        if isinstance(entity, dict) and isinstance(entity.get("name"), str):
            perms = {p for p in item.get("permissions") or [] if isinstance(p, str)}
            scoped.append((str(entity.get("type") or ""), entity["name"], perms))
    return glob, scoped


def _on(fine_grained: Any, target: str) -> set[str]:
    """Permissions a fine-grained token holds on ``target`` (an org or user name, or ``owner/repo``): global
    ones, those scoped to it, and for a repository those scoped to its owner."""
    glob, scoped = _grants(fine_grained)
    owner = target.split("/", 1)[0]
    found = set(glob)
    for kind, name, perms in scoped:
        if name == target or (name == owner and kind not in _REPO_TYPES and "/" in target):
            found |= perms
    return found


def _everywhere(fine_grained: Any) -> set[str]:
    glob, scoped = _grants(fine_grained)
    return glob.union(*(perms for _kind, _name, perms in scoped))


def _role_ok(role: str | None, required: str, fine_grained: Any) -> bool:
    if role == "write":
        return True
    if role == "read":
        return required == "read"
    if role == "fineGrained":
        # Any token reads public repositories; writing needs the repo.write permission somewhere.
        return required == "read" or "repo.write" in _everywhere(fine_grained)
    return False


def _shortfalls(body: Mapping[str, Any], role: str | None, context: VerifyContext) -> dict[str, str]:
    required = str(context.account("required_role") or "read")
    access = (body.get("auth") or {}).get("accessToken") or {}
    grained = access.get("fineGrained")
    user = str(body.get("name") or "")
    orgs = {o["name"]: o.get("roleInOrg") for o in body.get("orgs") or [] if isinstance(o, dict) and "name" in o}
    problems: dict[str, str] = {}
    shown = {"fineGrained": "fine-grained"}.get(role or "", role or "unknown")
    if not _role_ok(role, required, grained):
        if role == "fineGrained":
            problems["api_token"] = _(
                "The token has no repo.write permission; this account requires %(required)s.", required=required
            )
        else:
            problems["api_token"] = _(
                "The token's role is %(role)s; this account requires %(required)s.", role=shown, required=required
            )
    repo_perm = "repo.write" if required == "write" else "repo.content.read"
    org = context.account("organization")
    targets = [t for t in (org,) if t]
    if org:
        if org not in orgs:
            problems["organization"] = (
                _("%(user)s is not a member of %(org)s.", user=user, org=org)
                if user
                else _("The token is not a member of %(org)s.", org=org)
            )
        elif role == "fineGrained" and required == "write" and repo_perm not in _on(grained, org):
            problems["organization"] = _(
                "The token has no %(permission)s permission on %(target)s.", permission=repo_perm, target=org
            )
        elif role == "write" and required == "write" and orgs[org] not in _ORG_WRITERS:
            problems["organization"] = _(
                "%(user)s's role in %(org)s is %(role)s; writing needs admin or write.",
                user=user,
                org=org,
                role=orgs[org],
            )
    for name in ("default_repo", "space"):
        repo = context.account(name)
        if not repo:
            continue
        targets.append(repo)
        owner = repo.split("/", 1)[0]
        if role == "fineGrained" and repo_perm not in _on(grained, repo):
            problems[name] = _(
                "The token has no %(permission)s permission on %(target)s.", permission=repo_perm, target=repo
            )
        elif role == "write" and required == "write" and owner != user and orgs.get(owner) not in _ORG_WRITERS:
            problems[name] = (
                _("%(user)s cannot write to %(owner)s's repositories.", user=user, owner=owner)
                if user
                else _("The token cannot write to %(owner)s's repositories.", owner=owner)
            )
    wanted = [str(p) for p in context.account("required_permissions") or []]
    if role == "fineGrained":
        held = set().union(*(_on(grained, t) for t in targets)) if targets else _everywhere(grained)
        missing = [p for p in wanted if p not in held]
    else:
        missing = [p for p in wanted if role != "write" and not p.endswith(".read")]
    if missing:
        lacks = ", ".join(missing)
        if targets and role == "fineGrained":
            problems["required_permissions"] = _(
                "The %(kind)s token lacks %(permissions)s on %(targets)s.",
                kind=shown,
                permissions=lacks,
                targets=", ".join(targets),
            )
        else:
            problems["required_permissions"] = _(
                "The %(kind)s token lacks %(permissions)s.", kind=shown, permissions=lacks
            )
    return problems


def after_verify(entry: ProviderEntry, context: VerifyContext) -> dict[str, Any]:
    """Keep user name, display name, orgs and token role/name (and the rate-limit headers); refuse a token
    that is not enough for the account's role, organization, repositories or permissions."""
    data: dict[str, Any] = dict(context.kept)
    body = context.json if isinstance(context.json, dict) else {}
    access = (body.get("auth") or {}).get("accessToken") or {}
    role = access.get("role") if isinstance(access.get("role"), str) else None
    limits = rate_limit_info(context.headers)
    if limits:
        data["rate_limit"] = limits
    problems = _shortfalls(body, role, context)
    if problems:
        required = str(context.account("required_role") or "read")
        raise AppError(
            "permission_denied",
            _("This token is not enough for this account: %(problems)s", problems=" ".join(problems.values())),
            _(
                "Create a %(required)s token, or a fine-grained one with the permissions needed on the organization "
                "and repositories named here, at %(url)s — or change what the account asks for.",
                required=required,
                url=TOKENS_URL,
            ),
            fields=problems,
        )
    if role == "fineGrained":
        data["token_permissions"] = sorted(_everywhere(access.get("fineGrained")))
    return data
