"""Fixtures of the browser tests: one `make dev` stack and one headless Chromium for the whole session.

Opt-in like the deployment tests: plain `make test` skips them (they take minutes and need Chromium);
`make test-ui` (and `.ci/run`) sets `RETOUCH_UI_TESTS=1`. When enabled, a missing browser is a failure, not a
skip, so CI cannot pass without running them.

The browser is Debian's `chromium` driven by Playwright for Python: Playwright's own browser downloads are
impossible here. It gets a fresh user-data-dir, no background networking, and a route that aborts every
request that is not to loopback (recorded and checked at the end), so the tests never reach outside.

Screenshots go to `test-artifacts/ui/` (gitignored): the named ones the tests take, plus `FAILED-<test>.png`
of the page a failing test was on. `make screenshots` copies the named ones to `docs/screenshots/`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import BrowserContext, Page, Route, ViewportSize, expect, sync_playwright

from retouch_devtools.stack.dev import SAMPLE_COUNT, DevProcess, start_dev_process

ENABLE_ENV = "RETOUCH_UI_TESTS"
CHROMIUM = os.environ.get("RETOUCH_UI_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
VIEWPORT: ViewportSize = {"width": 1400, "height": 900}
# How long a page action or an assertion waits. Playwright's assertions default to 5 s, its actions to 30 s;
# on two busy cores the asset graph's partition counts have taken longer than 5 s to load (CI of 079d52c), so
# both wait as long: what a user waiting for the UI would still accept.
UI_WAIT_MS = 30_000


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"ui: browser test against make dev's stack; needs {ENABLE_ENV}=1")
    expect.set_options(timeout=UI_WAIT_MS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(ENABLE_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=f"browser test: run `make test-ui` (sets {ENABLE_ENV}=1)")
    for item in items:
        if item.get_closest_marker("ui") is not None:
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember each phase's report on the item, so the page fixture knows whether its test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    return ARTIFACTS


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, artifacts: Path) -> Iterator[DevProcess]:
    """`make dev`'s stack, with the seeded sample catalog already retouched by the sensors (no click):
    the state a developer finds a minute after `make dev`."""
    workdir = tmp_path_factory.mktemp("ui-stack")
    dev = start_dev_process(workdir)
    try:
        dev.wait_until(
            lambda: dev.graphql("{ version }").get("version"), 180, "the Dagster webserver to answer"
        )

        def all_recorded() -> bool:
            pngs = [k for k in dev.output_keys() if k.endswith(".png")]
            recorded = dev.materialized_partitions("retouched_image")
            return len(pngs) == SAMPLE_COUNT and recorded == SAMPLE_COUNT

        dev.wait_until(all_recorded, 240, f"the sensors to retouch the {SAMPLE_COUNT} sample images")
        yield dev
    finally:
        status = dev.stop()
        (artifacts / "dev-stack.log").write_bytes(dev.log.read_bytes())
    assert status == 0, f"`retouch-pipeline dev` did not stop cleanly on Ctrl-C (status {status})"


@pytest.fixture(scope="session")
def browser_context(artifacts: Path) -> Iterator[BrowserContext]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (Debian's package)")
    blocked: list[str] = []

    def loopback_only(route: Route) -> None:
        host = urlsplit(route.request.url).hostname or ""
        if host in LOOPBACK:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    with tempfile.TemporaryDirectory(prefix="ui-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport=VIEWPORT,
            locale="en-US",
            timezone_id="UTC",
        )
        context.route("**/*", loopback_only)
        try:
            yield context
        finally:
            context.close()
    # Dagster's UI is self-contained; anything else would be a leak of the test machine's traffic.
    assert not blocked, f"the UI tried to reach beyond loopback: {blocked[:5]}"


@pytest.fixture
def page(browser_context: BrowserContext, request: pytest.FixtureRequest, artifacts: Path) -> Iterator[Page]:
    """A fresh tab per test; its last view is saved as FAILED-<test>.png when the test fails."""
    tab = browser_context.new_page()
    tab.set_default_timeout(UI_WAIT_MS)
    yield tab
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        tab.screenshot(path=str(artifacts / f"FAILED-{request.node.name}.png"), full_page=True)
    tab.close()
