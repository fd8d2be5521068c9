"""Catalog field schema → a WTForms ``FlaskForm`` class, built at runtime.

The WTForms fields only carry and render values; checking them is ``validate_submission`` (re-exported
here), the same function the JSON API and the CLI call, so a value the form accepts is a value the API
accepts. Secret fields are write-only: ``PasswordField`` (or a textarea that never renders its content),
``autocomplete="off"``, and on edit a blank secret keeps the stored one.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from flask_wtf import FlaskForm
from markupsafe import Markup
from wtforms import BooleanField, Field, PasswordField, SelectChoice, SelectField, StringField, TextAreaField
from wtforms.widgets import EmailInput, NumberInput, URLInput, html_params

from app.i18n import gettext, lazy_gettext
from app.providers.entries import FieldSpec, ProviderEntry, norm
from app.providers.types import FieldType, Which
from app.providers.validation import (
    FieldError,
    ValuesByScope,
    coerce,
    split_secrets,
    validate_submission,
    visibility,
)

__all__ = [
    "ProviderForm",
    "SchemaField",
    "initial_data",
    "provider_form_class",
    "split_secrets",
    "validate_submission",
]

_SECRET_ATTRS = {"autocomplete": "off", "spellcheck": "false", "autocapitalize": "off", "data-secret": "true"}


class WriteOnlyTextArea:
    """A textarea that never renders its value (for secret text such as a PEM key)."""

    def __call__(self, field: Field, **kwargs: Any) -> Markup:
        kwargs.setdefault("id", field.id)
        # html_params escapes every attribute value, as WTForms' own widgets rely on.
        return Markup(f"<textarea {html_params(name=field.name, **kwargs)}></textarea>")  # noqa: S704


@dataclass(frozen=True)
class SchemaField:
    """One rendered field: the catalog spec, the bound WTForms field, whether it is shown now, and the
    `data-visible-when` JSON for visible-when.js (same-set conditions only)."""

    spec: FieldSpec
    field: Field
    shown: bool
    condition: str | None


class ProviderForm(FlaskForm):  # type: ignore[misc]
    provider: ClassVar[ProviderEntry]
    which: ClassVar[Which]
    as_admin: ClassVar[bool] = True
    context: ClassVar[ValuesByScope | None] = None
    specs: ClassVar[tuple[FieldSpec, ...]] = ()

    def __init__(self, *args: Any, secrets_set: Collection[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.secrets_set = frozenset(secrets_set)
        self.clean: dict[str, Any] = {}
        self.form_errors: list[str] = []

    def submitted(self) -> dict[str, Any]:
        """What the browser sent for the catalog fields; a field it did not send (disabled while hidden)
        is left out and takes its default."""
        data: dict[str, Any] = {}
        for spec in self.specs:
            field = self._fields[spec.name]
            if spec.type == FieldType.BOOLEAN:
                data[spec.name] = bool(field.data)
            elif field.raw_data:
                data[spec.name] = field.raw_data[0]
        return data

    def validate(self, extra_validators: Any = None) -> bool:
        ok: bool = super().validate(extra_validators)
        clean, errors = validate_submission(
            self.provider,
            self.which,
            self.submitted(),
            secrets_set=self.secrets_set,
            context=self.context,
            as_admin=self.as_admin,
        )
        for name, message in errors.items():
            field = self._fields.get(name)
            if field is not None:
                field.errors = [*field.errors, message]
            else:
                self.form_errors.append(message)
        self.clean = clean
        return ok and not errors

    def current_values(self) -> dict[str, Any]:
        """Typed values as the form stands (submitted or initial), for deciding what is shown."""
        values: dict[str, Any] = {}
        posted = self.is_submitted()
        raw_values = self.submitted() if posted else {}
        for spec in self.specs:
            if spec.secret:
                continue
            raw = raw_values.get(spec.name) if posted else self._fields[spec.name].data
            if posted and spec.name not in raw_values:
                raw = spec.default
            try:
                values[spec.name] = coerce(spec, raw)
            except FieldError:
                values[spec.name] = None
        return values

    def schema_fields(self) -> list[SchemaField]:
        shown = visibility(self.provider, self.which, self.current_values(), self.context)
        items = []
        for spec in self.specs:
            condition = None
            if spec.visible_when is not None:
                same_set = {t.field: list(t.values) for t in spec.visible_when.terms if t.scope == self.which}
                condition = json.dumps(same_set, separators=(",", ":")) if same_set else None
            items.append(SchemaField(_translated(spec), self._fields[spec.name], shown[spec.name], condition))
        return items

    def typed_secret_labels(self) -> list[str]:
        """Secret fields that had a value in this (failed) submission: the page asks to type them again."""
        posted = self.submitted() if self.is_submitted() else {}
        return [gettext(spec.label) for spec in self.specs if spec.secret and str(posted.get(spec.name) or "").strip()]


def _translated(spec: FieldSpec) -> FieldSpec:
    """The spec as this request's reader sees it: the catalog's label and help in their language."""
    return replace(spec, label=gettext(spec.label), help=gettext(spec.help) if spec.help else "")


def _render_kw(spec: FieldSpec) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if spec.placeholder:
        # A phrase is translated (the catalog extraction takes those); a sample value stays as it is.
        kw["placeholder"] = lazy_gettext(spec.placeholder) if " " in spec.placeholder.strip() else spec.placeholder
    if spec.required:
        kw["aria-required"] = "true"
    if spec.secret:
        kw.update(_SECRET_ATTRS)
    if spec.type in (FieldType.URL, FieldType.HOST, FieldType.EMAIL, FieldType.STRING_LIST) or spec.pattern:
        kw.setdefault("spellcheck", "false")
        kw.setdefault("autocapitalize", "off")
    return kw


def _wtforms_field(spec: FieldSpec) -> Field:
    # The catalog's English text is the msgid (app/providers/catalog_messages.py extracts it); lazy, so the
    # words follow the locale of the request that renders the form.
    kw: dict[str, Any] = {
        "label": lazy_gettext(spec.label),
        "description": lazy_gettext(spec.help) if spec.help else "",
        "render_kw": _render_kw(spec),
    }
    kind = spec.type
    if spec.secret:
        if kind in (FieldType.TEXT, FieldType.JSON):
            return TextAreaField(widget=WriteOnlyTextArea(), **kw)
        return PasswordField(**kw)
    if kind == FieldType.BOOLEAN:
        return BooleanField(**kw)
    if kind == FieldType.ENUM:
        choices = [SelectChoice(o.value, lazy_gettext(o.label)) for o in spec.enum]
        if not spec.required or spec.default is None:
            choices.insert(0, SelectChoice("", "—"))
        # The catalog check (validate_submission) reports a bad choice on the field; WTForms' own check
        # would add a second, less helpful message.
        return SelectField(choices=choices, validate_choice=False, **kw)
    if kind == FieldType.INTEGER:
        kw["render_kw"]["inputmode"] = "numeric"
        return StringField(widget=NumberInput(min=spec.min, max=spec.max), **kw)
    if kind == FieldType.URL:
        return StringField(widget=URLInput(), **kw)
    if kind == FieldType.EMAIL:
        return StringField(widget=EmailInput(), **kw)
    if kind in (FieldType.TEXT, FieldType.JSON, FieldType.STRING_LIST):
        kw["render_kw"]["rows"] = 3 if kind == FieldType.STRING_LIST else 6
        return TextAreaField(**kw)
    return StringField(**kw)


def _statically_hidden(spec: FieldSpec, which: Which, context: ValuesByScope | None) -> bool:
    """A condition on the other set (an account field that depends on the config) is fixed for the form."""
    if spec.visible_when is None or context is None:
        return False
    for term in spec.visible_when.terms:
        if term.scope != which and norm(context.get(term.scope, {}).get(term.field)) not in term.values:
            return True
    return False


def provider_form_class(
    provider: ProviderEntry,
    which: Which,
    *,
    base: type[ProviderForm] = ProviderForm,
    as_admin: bool = True,
    context: ValuesByScope | None = None,
) -> type[ProviderForm]:
    """A form class for one field set of one entry. ``base`` may add the page's own fields (a name)."""
    specs = tuple(
        spec
        for spec in provider.fields(which)
        if not (spec.admin_only and not as_admin) and not _statically_hidden(spec, which, context)
    )
    attrs: dict[str, Any] = {
        "provider": provider,
        "which": which,
        "as_admin": as_admin,
        "context": context,
        "specs": specs,
    }
    for spec in specs:
        attrs[spec.name] = _wtforms_field(spec)
    return type(f"{provider.id.title().replace('_', '')}{which.title()}Form", (base,), attrs)


def _display(spec: FieldSpec, value: Any) -> Any:
    if value is None:
        return False if spec.type == FieldType.BOOLEAN else ""
    if spec.type == FieldType.STRING_LIST and isinstance(value, list):
        return "\n".join(str(v) for v in value)
    if spec.type == FieldType.JSON:
        return json.dumps(value, indent=2, sort_keys=True)
    if spec.type == FieldType.INTEGER:
        return str(value)
    return value


def initial_data(provider: ProviderEntry, which: Which, stored: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Form data for a GET: stored values, else the catalog defaults; secrets never included.

    Implied values (SMTP security → port) are not filled in: the field stays blank so that changing the
    option changes what it implies.
    """
    raw = stored or {}
    return {
        spec.name: _display(spec, raw.get(spec.name, spec.default))
        for spec in provider.fields(which)
        if not spec.secret
    }
