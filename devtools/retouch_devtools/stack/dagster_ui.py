"""Page helpers for Dagster's web UI (dagster-webserver 1.13), kept in one place because its DOM changes.

Selector policy: roles and visible text first (what a user reads), `data-tooltip` on asset nodes only where
the graph renders names inside SVG `foreignObject`s; no CSS class names (they are hashed per build). When a
Dagster upgrade breaks a test, this module is where to look.
"""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Locator, Page

IMAGES_LOADED_JS = "imgs => imgs.map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth}))"


def open_ui(page: Page, base_url: str, path: str) -> None:
    """Go to a UI route and get past first-visit interruptions.

    On a fresh instance Dagster shows a "Join the Dagster community" dialog (the dev stack turns it off with
    `nux: enabled: false`, but a user's own dagster.yaml may not): press its "Skip" when it shows up.
    """
    page.goto(base_url + path)
    page.get_by_role("link", name="Overview").first.wait_for()
    skip = page.get_by_role("button", name="Skip")
    if skip.count() and skip.first.is_visible():
        skip.first.click()


def asset_node(page: Page, asset: str) -> Locator:
    """An asset's node in a lineage graph (its name is rendered with a tooltip of the same text)."""
    return page.locator(f'[data-tooltip="{asset}"]').or_(page.get_by_text(asset, exact=True)).first


def button(page: Page | Locator, label: str | re.Pattern[str]) -> Locator:
    """A button by its visible label (whole text, or a pattern); Dagster's buttons carry icon names in their
    accessible names, so `get_by_role(name=...)` would have to spell those."""
    pattern = label if isinstance(label, re.Pattern) else re.compile(rf"^\s*{re.escape(label)}\s*$")
    return page.get_by_role("button").filter(has_text=pattern).first


def metadata_row(scope: Page | Locator, key: str | re.Pattern[str]) -> Locator:
    """The row of a metadata table whose key cell reads `key`."""
    return scope.get_by_role("row").filter(has=scope.get_by_text(key, exact=True)).first


def image_states(scope: Locator) -> list[dict[str, object]]:
    """alt, `complete` and `naturalWidth` of every <img> in scope: a broken or unloaded image has width 0."""
    states: list[dict[str, object]] = scope.locator("img").evaluate_all(IMAGES_LOADED_JS)
    return states


def toast_text(page: Page, pattern: str) -> re.Match[str]:
    """Wait for a toast (Dagster's confirmation after a launch) matching `pattern`; its match."""
    toast = page.get_by_text(re.compile(pattern)).first
    toast.wait_for()
    match = re.search(pattern, toast.inner_text())
    assert match is not None
    return match


def save(page: Page, directory: Path, name: str, *, full_page: bool = False) -> Path:
    """A named screenshot in the artifacts folder (`make screenshots` publishes a chosen few)."""
    path = directory / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path
