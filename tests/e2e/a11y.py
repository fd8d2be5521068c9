"""Every page the e2e suite opens is checked by axe-core and for sideways scroll, at 1280 px and 375 px.

axe-core comes from npm (tests/peers/node_modules/axe-core). Each page of every context the suite opens is
watched: when a document loads, its DOM is taken as the test's browser has it. After the test, each taken
document is replayed in a separate page (same URL, this tree's static files, no scripts) and checked at both
widths — the test itself is not slowed or disturbed. Each distinct page (its path, with numbers and tokens
folded) is checked once per width and test session. The test fails on any serious or critical violation
or on content wider than the window or its card (tests/e2e/conftest.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from playwright.sync_api import Browser, BrowserContext, Page, Route
from playwright.sync_api import Error as PlaywrightError

AXE_JS = Path(__file__).resolve().parents[1] / "peers" / "node_modules" / "axe-core" / "axe.min.js"
STATIC = Path(__file__).resolve().parents[2] / "static"
WIDTHS = (1280, 375)
FAILING_IMPACTS = frozenset({"serious", "critical"})

# Only AMI Auth's own pages: the OpenID Provider peer, the CMS stand-in and the vendor stand-ins are not ours.
_OUR_STYLESHEET = "/static/css/app.css"
# Frames are left out: a framed dialog is checked where a test opens it as a page of its own.
_RUN_AXE = """async () => {
  const result = await axe.run(document, {iframes: false, resultTypes: ['violations']});
  return result.violations.map(v => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 5).map(n =>
      (n.target || []).join(' ') + ' :: ' + (n.failureSummary || '').replace(/\\s+/g, ' ')),
  }));
}"""
# What sticks out: the page wider than the viewport, and any card whose content spills over its edge.
_OVERFLOW = """() => {
  const out = [];
  const doc = document.documentElement;
  if (doc.scrollWidth > window.innerWidth + 1) {
    out.push(`page is ${doc.scrollWidth} px wide in a ${window.innerWidth} px window`);
  }
  for (const el of document.querySelectorAll('.card, .stat')) {
    if (el.scrollWidth > el.clientWidth + 1) {
      const name = (el.querySelector('h1, h2, h3')?.textContent || el.className).trim().slice(0, 40);
      out.push(`content spills out of card "${name}" (${el.scrollWidth} px in ${el.clientWidth} px)`);
    }
  }
  return out;
}"""
_TOKENISH = re.compile(r"/(?:\d+|[A-Za-z0-9_-]{20,})(?=/|$)")


def page_key(url: str) -> str:
    """``http://localhost:5123/admin/users/17`` -> ``/admin/users/{id}``: one check per page, not per row."""
    return _TOKENISH.sub("/{id}", urlsplit(url).path) or "/"


@dataclass
class PageAudit:
    """Keeps what each distinct page looked like when it loaded; checks it once per width, away from the test."""

    source: str
    checked: set[tuple[str, int]] = field(default_factory=set)
    pending: dict[str, tuple[str, str]] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)
    _context: BrowserContext | None = None

    @classmethod
    def load(cls) -> PageAudit:
        return cls(AXE_JS.read_text(encoding="utf-8"))

    def watch_context(self, context: BrowserContext) -> None:
        context.on("page", self.watch_page)
        for page in context.pages:
            self.watch_page(page)

    def watch_page(self, page: Page) -> None:
        page.on("load", self._on_load)

    def _on_load(self, page: Page) -> None:
        # This runs beside the test, which goes on meanwhile: only read the document here, check it later.
        try:
            url = page.url
            key = page_key(url)
            if key in self.pending or all((key, w) in self.checked for w in WIDTHS):
                return
            html = page.content()
        except PlaywrightError:
            return  # the test moved on (a redirect, a click): the page is taken on its next visit
        if _OUR_STYLESHEET in html:
            self.pending[key] = (url, html)

    def flush(self, browser: Browser) -> list[str]:
        """Check the pages taken since the last flush; return (and forget) the running test's findings."""
        while self.pending:
            key, (url, html) = self.pending.popitem()
            self._check(browser, key, url, html)
        findings, self.findings = self.findings, []
        return findings

    def close(self) -> None:
        if self._context is not None:
            self._context.close()

    def _check(self, browser: Browser, key: str, url: str, html: str) -> None:
        if self._context is None:
            self._context = browser.new_context()
        page = self._context.new_page()
        try:
            page.route("**/*", lambda route: _replay(route, url, html))
            page.goto(url)
            for width in WIDTHS:
                if (key, width) in self.checked:
                    continue
                page.set_viewport_size({"width": width, "height": 800})
                self.findings.extend(f"{key} at {width} px: {line}" for line in self._check_now(page))
                self.checked.add((key, width))
        finally:
            page.close()

    def _check_now(self, page: Page) -> list[str]:
        if not page.evaluate("() => typeof window.axe !== 'undefined'"):
            page.evaluate(self.source)
        violations: list[dict[str, Any]] = page.evaluate(_RUN_AXE)
        lines = [
            f"axe {v['impact']} {v['id']} ({v['help']}): " + " | ".join(v["nodes"])
            for v in violations
            if v["impact"] in FAILING_IMPACTS
        ]
        lines.extend(page.evaluate(_OVERFLOW))
        return lines


def _replay(route: Route, url: str, html: str) -> None:
    """The document as the test's browser had it, with the stylesheets and images of this working tree.

    Scripts are left out: the document already holds what they did, and a passkey page must not start a ceremony.
    """
    request_url = route.request.url.split("#", 1)[0]
    if request_url == url.split("#", 1)[0]:
        route.fulfill(status=200, content_type="text/html; charset=utf-8", body=html)
        return
    path = urlsplit(request_url).path
    if path.startswith("/static/") and not path.endswith(".js"):
        file = (STATIC / path.removeprefix("/static/")).resolve()
        if file.is_relative_to(STATIC) and file.is_file():
            route.fulfill(path=file)
            return
    route.abort()
