"""The two forms of a connected account, both built from the catalog entry (app/providers/forms.py):

* the **details** form — the account's non-secret fields (plus a label), what "Add account" and "Edit
  details" ask for; secret fields are not part of it at all;
* the **secret** form — only the secret fields that apply (e.g. the generic API secret only for HTTP
  Basic), what the secure dialog asks for. It validates the typed secrets together with the account's
  stored values, so cross-field rules see the whole account.
"""

from __future__ import annotations

from typing import Any, ClassVar

from flask_wtf import FlaskForm
from wtforms import HiddenField, StringField
from wtforms.validators import Length

from app.connectors.accounts import LABEL_MAX
from app.i18n import lazy_gettext
from app.models import ConnectedAccount, ProviderConfig
from app.providers.entries import ProviderEntry
from app.providers.forms import ProviderForm, provider_form_class
from app.providers.validation import ValuesByScope, effective_values, visibility


class ActionForm(FlaskForm):  # type: ignore[misc]
    """CSRF only: buttons that post (test, roll back, delete, system mailer)."""


class DetailsBase(ProviderForm):
    label = StringField(
        lazy_gettext("Label"),
        validators=[Length(max=LABEL_MAX)],
        description=lazy_gettext("A name for people, e.g. “OpenAI (production)”. Blank uses the provider's name."),
        render_kw={"autocomplete": "off", "maxlength": LABEL_MAX},
    )


class SecretBase(ProviderForm):
    """The secure dialog's form: secret specs only; ``stored`` fills in the account's other values."""

    stored: ClassVar[dict[str, Any]] = {}
    return_to = HiddenField()

    def submitted(self) -> dict[str, Any]:
        data = dict(self.stored)
        data.update(super().submitted())
        return data

    def current_values(self) -> dict[str, Any]:
        # What decides which secret fields show (SMTP: the password only for PLAIN/LOGIN) is stored.
        return {**effective_values(self.provider, "account", self.stored), **super().current_values()}


def config_context(provider: ProviderEntry, cfg: ProviderConfig) -> ValuesByScope:
    return {"config": effective_values(provider, "config", cfg.config or {})}


def details_form_class(provider: ProviderEntry, cfg: ProviderConfig) -> type[ProviderForm]:
    full = provider_form_class(provider, "account", base=DetailsBase, context=config_context(provider, cfg))
    attrs: dict[str, Any] = {"specs": tuple(spec for spec in full.specs if not spec.secret)}
    for spec in full.specs:
        if spec.secret:
            attrs[spec.name] = None  # removes the WTForms field: a secret is never part of this form
    return type(f"{full.__name__}Details", (full,), attrs)


def has_own_label(provider: ProviderEntry) -> bool:
    """The entry declares a `label` account field (generic API keys): it replaces the console's own."""
    return provider.field("account", "label") is not None


def secret_form_class(provider: ProviderEntry, account: ConnectedAccount) -> type[SecretBase]:
    context = config_context(provider, account.provider_config)
    full = provider_form_class(provider, "account", base=SecretBase, context=context)
    stored = {
        spec.name: account.identifiers[spec.name]
        for spec in provider.fields("account")
        if not spec.secret and spec.name in (account.identifiers or {})
    }
    shown = visibility(provider, "account", effective_values(provider, "account", stored), context)
    attrs: dict[str, Any] = {
        "specs": tuple(spec for spec in full.specs if spec.secret and shown[spec.name]),
        "stored": stored,
    }
    for spec in full.specs:
        if not spec.secret:
            attrs[spec.name] = None
    cls = type(f"{full.__name__}Secret", (full,), attrs)
    assert issubclass(cls, SecretBase)
    return cls
