"""The admin web page in a real browser: Debian's Chromium, driven by Playwright.

Starts the real `sluice` (with a store and an admin token) in front of the session's
`sluice-mock`, then, as an operator would: signs in, creates a key and sees it once, uses it
for a request through the gateway, sees its spend and the live counters move, exports spend
as CSV, disables the key and sees the next request refused, and reads the change in the audit
log. Any console error (a Content-Security-Policy violation is one) fails the test.

Screenshots of each page go to `target/ui-screenshots/` (or `$SLUICE_UI_SCREENSHOTS`).
Playwright never downloads a browser here: it is pointed at `/usr/bin/chromium`.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from conftest import REPO, start_gateway, stop

CHROMIUM = os.environ.get("SLUICE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
ADMIN_TOKEN = "pytest-admin-token-5e1d9c3b7a"
WAIT_MS = 15_000


def screenshot_dir() -> Path:
    d = Path(os.environ.get("SLUICE_UI_SCREENSHOTS", REPO / "target" / "ui-screenshots"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def ui_config(mock_addr: str, store: Path) -> str:
    return f"""\
[server]
listen = "127.0.0.1:0"
workers = 1

[log]
level = "info"
format = "json"

[admin]
listen = "127.0.0.1:0"

[store]
path = "{store}"

[[providers]]
name = "mock"
kind = "openai"
base_url = "http://{mock_addr}/v1"

[[models]]
name = "mock-fast"
deployments = [{{ provider = "mock", model = "mock-model" }}]

[[models]]
name = "mock-stream"
deployments = [{{ provider = "mock", model = "mock-stream-model" }}]

[prices."mock-model"]
input_per_mtok = 2.5
output_per_mtok = 10.0

[prices."mock-stream-model"]
input_per_mtok = 2.5
output_per_mtok = 10.0

# The response cache, for the cache page.
[[models]]
name = "mock-cached"
deployments = [{{ provider = "mock", model = "mock-model" }}]
cache = {{ ttl_s = 600 }}
"""


@pytest.fixture(scope="module")
def admin_gateway(mock, tmp_path_factory):
    """A gateway with keys in a store and the admin API on: (client address, admin address)."""
    d = tmp_path_factory.mktemp("admin-ui")
    gw = start_gateway(d, ui_config(mock.addr, d / "sluice.db"), env={"SLUICE_ADMIN_TOKEN": ADMIN_TOKEN})
    yield gw.addr, gw.admin
    stop(gw.proc)


def chat(addr: str, key: str, model: str = "mock-fast") -> tuple[int, dict]:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hello"}]}).encode()
    req = urllib.request.Request(
        f"http://{addr}/v1/chat/completions",
        data=body,
        headers={"content-type": "application/json", "authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} not found: install Debian's `chromium` (scripts/test.sh does)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            accept_downloads=True,
            viewport={"width": 1400, "height": 900},
        )
        page = context.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        yield page, problems
        context.close()


def cell(page: Page, table: str, row_text: str, column: int):
    """The `column`-th cell (0-based) of the row of `table` that contains `row_text`."""
    return page.locator(f"#{table} tbody tr", has_text=row_text).locator("td").nth(column)


def test_admin_page_end_to_end(admin_gateway, browser_page):
    listen, admin = admin_gateway
    page, problems = browser_page
    shots = screenshot_dir()
    page.set_default_timeout(WAIT_MS)

    # The page loads without the token and asks for it.
    page.goto(f"http://{admin}/ui")
    expect(page.locator("#login")).to_be_visible()
    page.screenshot(path=shots / "login.png", full_page=True)
    page.fill("#token", "wrong-token")
    page.click("#login-form button[type=submit]")
    expect(page.locator("#message")).to_contain_text("refused")
    expect(page.locator("#login")).to_be_visible()

    # Sign in: the token goes to session storage, never to a cookie or the URL.
    page.fill("#token", ADMIN_TOKEN)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#token-id")).to_contain_text(re.compile(r"admin-[0-9a-f]{8}"))
    assert page.evaluate("sessionStorage.getItem('sluice-admin-token')") == ADMIN_TOKEN
    assert page.context.cookies() == []
    assert ADMIN_TOKEN not in page.url

    # Create a key: it is shown once, with a copy button.
    page.click("#create-key-box summary")
    page.fill("#create-key input[name=name]", "browser-key")
    page.fill("#create-key input[name=team]", "web")
    page.fill("#create-key input[name=rpm]", "100")
    page.fill("#create-key input[name=budget_usd]", "5")
    page.click("#create-key button[type=submit]")
    expect(page.locator("#new-key")).to_be_visible()
    key = page.input_value("#new-key-value")
    assert key.startswith("sk-sluice-"), key
    expect(page.locator("#keys-table tbody tr", has_text="browser-key")).to_be_visible()
    row = page.locator("#keys-table tbody tr", has_text="browser-key")
    key_id = row.locator("td").nth(0).inner_text()
    expect(page.locator("#copy-key")).to_be_visible()
    page.screenshot(path=shots / "keys-new-key.png", full_page=True)
    page.click("#copy-key")
    expect(page.locator("#copy-key")).to_have_text("Copied")
    page.click("#dismiss-key")
    expect(page.locator("#new-key")).to_be_hidden()
    page.reload()
    expect(page.locator("#keys-table tbody tr", has_text="browser-key")).to_be_visible()
    assert key not in page.content(), "the key is shown once"
    assert page.input_value("#new-key-value") == ""

    # Use it through the gateway.
    status, answer = chat(listen, key)
    assert status == 200, answer

    # Its spend this period moves on the keys page.
    def spend_cell() -> str:
        page.reload()
        return cell(page, "keys-table", key_id, 7).inner_text()

    wait_for_text = spend_cell()
    for _ in range(50):
        if wait_for_text not in ("$0.00", "–"):
            break
        page.wait_for_timeout(200)
        wait_for_text = spend_cell()
    assert wait_for_text.startswith("$") and wait_for_text != "$0.00", wait_for_text
    page.screenshot(path=shots / "keys.png", full_page=True)

    # Spend by key: the ledger row, a chart, and a CSV export.
    page.click("nav a[data-page=spend]")
    page.select_option("#spend-form select[name=group_by]", "key")
    for _ in range(50):
        page.click("#spend-form button[type=submit]")
        if page.locator("#spend-table tbody tr", has_text=key_id).count():
            break
        page.wait_for_timeout(200)
    expect(page.locator("#spend-table tbody tr", has_text=key_id)).to_be_visible()
    expect(page.locator("#spend-chart svg rect")).to_have_count(1)
    with page.expect_download() as download:
        page.click("#spend-csv")
    csv = Path(download.value.path()).read_text()
    assert csv.splitlines()[0].startswith("group,requests,"), csv
    assert key_id in csv, csv
    page.select_option("#spend-form select[name=group_by]", "day")
    page.click("#spend-form button[type=submit]")
    expect(page.locator("#spend-chart svg rect")).to_have_count(1)
    page.screenshot(path=shots / "spend.png", full_page=True)

    # Live traffic: the counters move as requests go through (the page refreshes itself).
    page.click("nav a[data-page=live]")
    total = page.locator("#live-requests-total .value")
    expect(total).not_to_have_text("0")
    before = int(total.inner_text().replace(",", ""))
    for _ in range(3):
        assert chat(listen, key)[0] == 200
    expect(total).to_have_text(str(before + 3))
    expect(page.locator("#live-table tbody tr", has_text="mock-fast")).to_be_visible()
    expect(page.locator("#live-chart svg polyline").first).to_be_visible()
    page.screenshot(path=shots / "live.png", full_page=True)

    # Upstream health.
    page.click("nav a[data-page=health]")
    expect(cell(page, "health-table", "mock/mock-model", 3)).to_have_text("closed")
    page.screenshot(path=shots / "health.png", full_page=True)

    # The cache: its counters, the models with a cache, and a clear (asked first, audited).
    for _ in range(2):
        assert chat(listen, key, "mock-cached")[0] == 200
    page.click("nav a[data-page=cache]")
    expect(page.locator("#cache-entries .value")).to_have_text("1")
    expect(page.locator("#cache-inserts .value")).to_have_text("1")
    expect(cell(page, "cache-groups", "mock-cached", 3)).to_have_text("team")
    page.select_option("#cache-clear select[name=model]", "mock-cached")
    page.screenshot(path=shots / "cache.png", full_page=True)
    # Dismissed: nothing is cleared.
    page.once("dialog", lambda d: d.dismiss())
    page.click("#cache-clear button[type=submit]")
    page.reload()
    expect(page.locator("#cache-entries .value")).to_have_text("1")
    # Accepted, after reading what it will clear.
    asked: list[str] = []

    def accept(d):
        asked.append(d.message)
        d.accept()

    page.once("dialog", accept)
    page.select_option("#cache-clear select[name=model]", "mock-cached")
    page.click("#cache-clear button[type=submit]")
    expect(page.locator("#message")).to_contain_text("Cleared the cached answers of model mock-cached")
    expect(page.locator("#cache-clears .value")).to_have_text("1")
    assert asked and "mock-cached" in asked[0], asked
    # Cleared entries are dropped when next looked up: the same request misses and is kept anew.
    assert chat(listen, key, "mock-cached")[0] == 200
    page.reload()
    expect(page.locator("#cache-inserts .value")).to_have_text("2")
    page.screenshot(path=shots / "cache-cleared.png", full_page=True)

    # Teams: create one, see it listed.
    page.click("nav a[data-page=teams]")
    page.click("#page-teams details summary")
    page.fill("#create-team input[name=name]", "research")
    page.fill("#create-team input[name=tpm]", "50000")
    page.click("#create-team button[type=submit]")
    expect(cell(page, "teams-table", "research", 2)).to_contain_text("50000 tpm")
    page.screenshot(path=shots / "teams.png", full_page=True)

    # Edit the key's limits, then disable it: the next request is refused.
    page.click("nav a[data-page=keys]")
    row = page.locator("#keys-table tbody tr", has_text=key_id)
    row.locator("button[data-action=edit]").click()
    page.fill("#edit-form input[name=rpm]", "7")
    page.click("#edit-save")
    expect(cell(page, "keys-table", key_id, 5)).to_contain_text("7 rpm")
    row.locator("button[data-action=disable]").click()
    expect(cell(page, "keys-table", key_id, 4)).to_have_text("disabled")
    status, answer = chat(listen, key)
    assert status == 401, answer

    # The audit log has each change, made from the page, by the token's id.
    page.click("nav a[data-page=audit]")
    audit = page.locator("#audit-table tbody")
    for action in ("keys.create", "keys.update", "keys.disable", "teams.create", "cache.clear"):
        expect(audit.locator("tr", has_text=action).first).to_be_visible()
    expect(audit.locator("tr", has_text="keys.disable").locator("td").nth(2)).to_have_text("ui")
    assert ADMIN_TOKEN not in page.content()
    page.screenshot(path=shots / "audit.png", full_page=True)

    # Signing out forgets the token.
    page.click("#logout")
    expect(page.locator("#login")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('sluice-admin-token')") is None

    # The only console error allowed is the refused wrong token's 401 (the browser logs it).
    unexpected = [p for p in problems if "401" not in p]
    assert unexpected == [], unexpected
