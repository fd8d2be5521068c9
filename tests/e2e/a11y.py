"""Every page the e2e suite opens is checked by axe-core and for sideways scroll, at 1280 px and 375 px.

axe-core comes from npm (tests/peers/node_modules/axe-core). Each page of every context the suite opens is
watched: when a document loads, its DOM is taken as the test's browser has it. After the test, each taken
document is put in a page of its own (its stylesheet inlined, no scripts, nothing fetched) and checked at
both widths — the test itself is not slowed or disturbed. Each distinct page (its path, with numbers and tokens
folded) is checked once per width and test session. The test fails on any serious or critical violation
or on content wider than the window or its card (tests/e2e/conftest.py).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from playwright.sync_api import Browser, BrowserContext, Page
from playwright.sync_api import Error as PlaywrightError

AXE_JS = Path(__file__).resolve().parents[1] / "peers" / "node_modules" / "axe-core" / "axe.min.js"
STYLESHEET = Path(__file__).resolve().parents[2] / "static" / "css" / "app.css"
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
# The address and the whole document (doctype included) at once, or null while a document is still loading.
_SNAPSHOT = """() => document.readyState !== 'complete' ? null : [
  location.href,
  (document.doctype ? new XMLSerializer().serializeToString(document.doctype) : '')
    + document.documentElement.outerHTML,
]"""
_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", re.DOTALL | re.IGNORECASE)
_STYLESHEET_LINK = re.compile(r"<link\b[^>]*/static/css/app\.css[^>]*>")
_TOKENISH = re.compile(r"/(?:\d+|[A-Za-z0-9_-]{20,})(?=/|$)")


def page_key(url: str) -> str:
    """``http://localhost:5123/admin/users/17`` -> ``/admin/users/{id}``: one check per page, not per row."""
    return _TOKENISH.sub("/{id}", urlsplit(url).path) or "/"


@dataclass
class PageAudit:
    """Keeps what each distinct page looked like when it loaded; checks it once per width, away from the test."""

    source: str
    checked: set[tuple[str, int]] = field(default_factory=set)
    pending: dict[str, str] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)
    seconds: float = 0.0  # spent checking, for the run's summary line
    started: float = field(default_factory=time.perf_counter)
    _context: BrowserContext | None = None
    _page: Page | None = None

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
            if all((page_key(page.url), w) in self.checked for w in WIDTHS):
                return
            # The address and the document in one read, from a document that has finished loading: read apart,
            # the test (which goes on meanwhile) may have moved the page on between the two.
            taken = page.evaluate(_SNAPSHOT)
        except PlaywrightError:
            return  # the test moved on (a redirect, a click): the page is taken on its next visit
        if taken is None:
            return
        key, html = page_key(taken[0]), taken[1]
        if key not in self.pending and _OUR_STYLESHEET in html:
            self.pending[key] = html

    def flush(self, browser: Browser) -> list[str]:
        """Check the pages taken since the last flush; return (and forget) the running test's findings."""
        started = time.perf_counter()
        while self.pending:
            key, html = self.pending.popitem()
            self._check(browser, key, html)
        self.seconds += time.perf_counter() - started
        findings, self.findings = self.findings, []
        return findings

    def close(self) -> None:
        if self._context is not None:
            self._context.close()

    def _check(self, browser: Browser, key: str, html: str) -> None:
        if self._page is None:
            self._context = browser.new_context()
            self._page = self._context.new_page()
        page = self._page
        # document.write keeps the window, so axe-core, once evaluated, stays for every later document.
        page.set_content(standalone(html))
        for width in WIDTHS:
            if (key, width) in self.checked:
                continue
            page.set_viewport_size({"width": width, "height": 800})
            self.findings.extend(f"{key} at {width} px: {line}" for line in self._check_now(page))
            self.checked.add((key, width))

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


def standalone(html: str) -> str:
    """The document as the test's browser had it, with this tree's stylesheet inlined and its scripts left out.

    Nothing is fetched: the check does not need the live server (gone by then) and is not slowed by it. The
    scripts' work is already in the document, and a passkey page must not start a ceremony again.
    """
    css = STYLESHEET.read_text(encoding="utf-8")
    html = _SCRIPT.sub("", html)
    html, found = _STYLESHEET_LINK.subn(lambda _m: f"<style>{css}</style>", html)
    assert found == 1, "the page's link to static/css/app.css was not found: the check would run unstyled"
    return html
