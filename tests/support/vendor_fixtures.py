"""Pytest fixtures for the SaaS stand-ins in :mod:`tests.support.vendors`.

How to load them: a test module declares

    pytest_plugins = ("tests.support.vendor_fixtures",)

(pytest registers the plugin once per session, however many modules declare it). Importing fixture
functions by name is avoided on purpose: ruff reports the import as unused and the test parameter as a
redefinition. When the integrator adds ``"tests.support.vendor_fixtures"`` to a ``pytest_plugins`` in the
root ``tests/conftest.py``, the per-module lines become redundant but harmless.

Fixtures (function scope: every test gets a fresh server with no keys, accounts or clients; a server
starts in about a millisecond, and ID-token keys come from a per-process pool):

- ``openai_standin`` → :class:`~tests.support.vendors.openai.OpenAI`
- ``anthropic_standin`` → :class:`~tests.support.vendors.anthropic.Anthropic`
- ``huggingface_standin`` → :class:`~tests.support.vendors.huggingface.HuggingFace`
- ``generic_api_standin`` → :class:`~tests.support.vendors.generic.GenericApi` (bearer auth; other auth types
  via ``start_vendor(GenericApi(auth_type="query", query_param="key"))``)
- ``google_standin`` → :class:`~tests.support.vendors.google.Google`
- ``github_standin`` → :class:`~tests.support.vendors.github.GitHub` (github.com layout; Enterprise via
  ``start_vendor(GitHub(enterprise=True))``)
- ``microsoft_standin`` → :class:`~tests.support.vendors.microsoft.Microsoft`
- ``start_vendor`` → a function that starts any stand-in instance (a second provider, another
  configuration) and stops it at teardown; annotate it with ``tests.support.vendors.base.StartVendor``.

Test modules import types (``StartVendor``, the vendor classes) from their :mod:`tests.support.vendors` modules, never
from this module: importing a plugin before pytest registers it defeats assertion rewriting, which
``filterwarnings = error`` turns into a collection error.

Teardown stops the server (joining its threads) and fails the test if the stand-in itself raised
(``Vendor.assert_healthy``), so a stand-in bug is never mistaken for an app bug.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

import pytest

from tests.support.vendors.anthropic import Anthropic
from tests.support.vendors.base import StartVendor, Vendor
from tests.support.vendors.generic import GenericApi
from tests.support.vendors.github import GitHub
from tests.support.vendors.google import Google
from tests.support.vendors.huggingface import HuggingFace
from tests.support.vendors.microsoft import Microsoft
from tests.support.vendors.openai import OpenAI

V = TypeVar("V", bound=Vendor)


def _run(vendor: V) -> Iterator[V]:
    vendor.start()
    try:
        yield vendor
    finally:
        vendor.stop()
    vendor.assert_healthy()


@pytest.fixture
def start_vendor() -> Iterator[StartVendor]:
    """``start_vendor(GitHub(enterprise=True))`` → the started stand-in, stopped at teardown."""
    running: list[Vendor] = []

    def start(vendor: V, /) -> V:
        vendor.start()
        running.append(vendor)
        return vendor

    yield start
    for vendor in reversed(running):
        vendor.stop()
    for vendor in running:
        vendor.assert_healthy()


@pytest.fixture
def openai_standin() -> Iterator[OpenAI]:
    yield from _run(OpenAI())


@pytest.fixture
def anthropic_standin() -> Iterator[Anthropic]:
    yield from _run(Anthropic())


@pytest.fixture
def huggingface_standin() -> Iterator[HuggingFace]:
    yield from _run(HuggingFace())


@pytest.fixture
def generic_api_standin() -> Iterator[GenericApi]:
    yield from _run(GenericApi())


@pytest.fixture
def google_standin() -> Iterator[Google]:
    yield from _run(Google())


@pytest.fixture
def github_standin() -> Iterator[GitHub]:
    yield from _run(GitHub())


@pytest.fixture
def microsoft_standin() -> Iterator[Microsoft]:
    yield from _run(Microsoft())
