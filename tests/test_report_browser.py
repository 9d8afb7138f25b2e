"""The run report in a real browser (Debian's Chromium, headless, driven by Playwright): it
renders with no console errors and no network requests (it is self-contained), its plots
are visible, and at a phone's width the page does not scroll sideways and its tables are
readable. Needs `chromium` (scripts/setup.sh installs it): skipped without it, failed
with SPA_REQUIRE_BROWSER=1 (as `make test` sets).

    python tests/test_report_browser.py docs/report-example.png   # the README's screenshot
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from test_report import render  # the same recorded run as the report tests

from spa_core.evaluation.report import DPI, FIGSIZE

REQUIRE_ENV = "SPA_REQUIRE_BROWSER"
#: A phone: CSS pixels, pixel ratio, and a mobile browser's viewport handling.
PHONE = {"viewport": {"width": 375, "height": 812}, "device_scale_factor": 3,
         "is_mobile": True, "has_touch": True}
#: What the page measures of itself: layout width, horizontal overflow, plots, tables.
_MEASURE = """() => ({
  width: window.innerWidth,
  overflow: document.documentElement.scrollWidth - window.innerWidth,
  images: [...document.images].map(i => ({complete: i.complete, natural: i.naturalWidth,
    shown: i.getBoundingClientRect().width, height: i.getBoundingClientRect().height,
    visible: getComputedStyle(i).visibility === 'visible' && i.offsetParent !== null})),
  tables: [...document.querySelectorAll('table')].map(t => ({
    box: t.parentElement.getBoundingClientRect().right,
    font: parseFloat(getComputedStyle(t.querySelector('td')).fontSize)})),
})"""


def chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium()
    if path is None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail("no chromium on PATH (scripts/setup.sh test installs Debian's)")
        pytest.skip("no chromium on PATH")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: Chromium's sandbox refuses to run as root (CI runs as root).
        instance = playwright.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield instance
        instance.close()


def open_report(browser: Any, html: Path, **context: Any) -> tuple[Any, list[str], list[str]]:
    """The report in a new page; the console messages and page errors it caused, and every
    URL it requested."""
    page = browser.new_context(**context).new_page()
    messages: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: messages.append(f"error: {e}"))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(html.as_uri(), wait_until="load")
    return page, messages, requests


def test_the_report_renders_self_contained_with_visible_plots(browser: Any,
                                                              tmp_path: Path) -> None:
    html, _ = render(tmp_path)
    page, messages, requests = open_report(browser, html, viewport={"width": 1280,
                                                                    "height": 900})
    assert messages == []
    assert requests == [html.as_uri()], "the report fetched something besides itself"
    seen = page.evaluate(_MEASURE)
    assert len(seen["images"]) == 5
    for image in seen["images"]:
        assert image["complete"] and image["visible"], image
        assert image["natural"] == round(FIGSIZE[0] * DPI), image  # decoded, full size
        assert image["shown"] > 300 and image["height"] > 100, image
    assert seen["overflow"] <= 0


def test_at_a_phones_width_nothing_scrolls_sideways_and_tables_are_readable(
        browser: Any, tmp_path: Path) -> None:
    html, _ = render(tmp_path)
    page, messages, _ = open_report(browser, html, **PHONE)
    seen = page.evaluate(_MEASURE)
    assert messages == []
    # Laid out at the phone's width (a page without a viewport meta is laid out at 980 px
    # and shrunk: its text would be a third of its size).
    assert seen["width"] == PHONE["viewport"]["width"]
    assert seen["overflow"] <= 0, "the page scrolls sideways"
    assert all(image["shown"] <= seen["width"] for image in seen["images"])
    assert len(seen["tables"]) == 3  # headline, funnel, evaluation
    for table in seen["tables"]:
        assert table["box"] <= seen["width"] and table["font"] >= 14, table


def screenshot(target: Path) -> None:
    """The README's picture: the report as Chromium shows it, the whole page."""
    import tempfile

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        html, _ = render(Path(tmp))
        instance = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = instance.new_page(viewport={"width": 1000, "height": 900})
        page.goto(html.as_uri(), wait_until="load")
        page.screenshot(path=str(target), full_page=True)
        instance.close()


if __name__ == "__main__":
    screenshot(Path(sys.argv[1]))
