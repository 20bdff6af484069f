"""The web console in a real browser: Debian's Chromium, headless, driven
by Playwright against `fluxo serve --demo`. The demo's generator keeps data
flowing, so "the chart updates" means its data changed while we watched.
Any JavaScript error or failed request in the page fails the test."""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid

import pytest
from playwright.sync_api import sync_playwright, expect

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# CI machines are shared and slow at times: give the page room.
expect.set_options(timeout=15_000)
# Without the background-networking flags Chromium keeps dialing Google's
# hosts, which this machine's closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture
def demo(broker_factory):
    return broker_factory(extra_args=["--demo"], name="demo")


@pytest.fixture
def page_with_errors(demo):
    """(page, errors, base_url): a fresh page; `errors` collects console
    errors, uncaught exceptions and failed or 5xx requests."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        # Chromium logs every 4xx answer as a console error; the tests
        # provoke some on purpose (a bad statement), and the page shows them.
        page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}")
                if m.type == "error" and not re.search(r"status of 4\d\d", m.text) else None)
        page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
        # Streams and polls cut short by navigation or a reload are aborted,
        # not failed.
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url} {r.failure}")
                if "ERR_ABORTED" not in (r.failure or "") and "/changes" not in r.url
                and "/live" not in r.url else None)
        page.on("response", lambda r: errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 500 else None)
        page.set_default_timeout(30_000)
        yield page, errors, f"http://{demo.http_addr}"
        context.close()
        browser.close()


def chart_version(locator) -> int:
    return int(locator.get_attribute("data-version") or "0")


def wait_for_change(locator, seconds: float = 30.0) -> None:
    """Waits until the chart renders new data after it first had some."""
    deadline = time.monotonic() + seconds
    while chart_version(locator) < 1:
        assert time.monotonic() < deadline, "the chart never got data"
        time.sleep(0.2)
    first = chart_version(locator)
    while chart_version(locator) <= first:
        assert time.monotonic() < deadline, f"the chart did not change in {seconds}s"
        time.sleep(0.2)


@pytest.mark.timeout(240)
def test_overview_topics_pipelines_and_sql_in_a_browser(page_with_errors):
    page, errors, base = page_with_errors
    page.goto(base + "/")

    # Overview: the throughput charts render and move.
    records = page.locator('[data-testid="chart"][data-chart-id="records"]')
    expect(records).to_be_visible()
    wait_for_change(records)
    expect(page.locator('[data-testid="card-topics"]')).to_contain_text(re.compile(r"[1-9]"))

    # Topics: the demo's topics, and the browser shows their records.
    page.click('a[data-nav="topics"]')
    for topic in ("orders", "clicks", "fraud-alerts"):
        expect(page.locator(f'[data-testid="topics-table"] tr[data-topic="{topic}"]')).to_be_visible()
    page.click('tr[data-topic="orders"]')
    expect(page.locator('[data-testid="topic-detail"]')).to_be_visible()
    rows = page.locator('[data-testid="records-table"] tr[data-offset]')
    expect(rows.first).to_be_visible()
    expect(rows.first).to_contain_text("order_id")

    # Produce a test record from the page; it shows in the browser.
    marker = uuid.uuid4().hex
    page.fill('[data-testid="produce-key"]', "console-test")
    page.fill('[data-testid="produce-value"]', json.dumps({"note": marker}))
    page.click('[data-testid="produce-submit"]')
    expect(page.locator('[data-testid="records-table"]')).to_contain_text(marker, timeout=15_000)

    # Pipelines: the demo's views run; a view's graph is drawn.
    page.click('a[data-nav="pipelines"]')
    row = page.locator('[data-testid="pipelines-table"] tr[data-pipeline="revenue_per_minute"]')
    expect(row).to_contain_text("running")
    row.click()
    expect(page.locator('[data-testid="pipeline-graph"]')).to_be_visible()
    expect(page.locator('[data-testid="pipeline-graph"]')).to_contain_text("orders")
    # A view over a join draws its graph: three sources meeting in joins.
    page.click('a[data-nav="pipelines"]')
    row = page.locator('[data-testid="pipelines-table"] tr[data-pipeline="customer_profile"]')
    expect(row).to_contain_text("running")
    row.click()
    graph = page.locator('[data-testid="pipeline-graph"]')
    expect(graph.locator(".node-source")).to_have_count(3)
    expect(graph).to_contain_text("Join")
    expect(graph.locator(".node-view")).to_have_count(1)

    # SQL editor: a pull query's rows as a table, and a bad statement's error.
    page.click('a[data-nav="sql"]')
    page.fill('[data-testid="sql-input"]',
              "SELECT product, orders, revenue FROM top_products ORDER BY revenue DESC LIMIT 5")
    page.click('[data-testid="sql-run"]')
    result_rows = page.locator('[data-testid="sql-results"] tbody tr')
    expect(result_rows.first).to_be_visible()
    assert 1 <= result_rows.count() <= 5
    expect(page.locator('[data-testid="sql-results"] thead')).to_contain_text("revenue")
    page.fill('[data-testid="sql-input"]', "SELECT * FROM no_such_view")
    page.click('[data-testid="sql-run"]')
    expect(page.locator('[data-testid="sql-error"]')).to_contain_text("no_such_view")

    assert not errors, "errors in the page:\n" + "\n".join(errors)


@pytest.mark.timeout(240)
def test_a_dashboard_created_on_a_view_updates_live(page_with_errors):
    page, errors, base = page_with_errors
    page.goto(base + "/#/dashboards")
    demo_link = page.locator('[data-testid="dashboard-list"] a', has_text="Shop live")
    expect(demo_link).to_be_visible()

    name = f"Test {uuid.uuid4().hex[:6]}"
    page.fill('[data-testid="dashboard-new-name"]', name)
    page.click('[data-testid="dashboard-create"]')
    expect(page.locator('[data-testid="dashboard-title"]')).to_contain_text(name)

    page.fill('[data-testid="chart-title"]', "Clicks")
    page.select_option('[data-testid="chart-view"]', "clicks_per_window")
    page.select_option('[data-testid="chart-type"]', "line")
    # Column pickers fill in from the view's columns.
    expect(page.locator('[data-testid="chart-x"] option[value="window_end"]')).to_have_count(1)
    page.select_option('[data-testid="chart-x"]', "window_end")
    page.select_option('[data-testid="chart-y"]', ["clicks"])
    page.click('[data-testid="chart-add"]')
    chart = page.locator('[data-testid="chart"][data-type="line"]')
    expect(chart).to_have_count(1)
    # Windows close every 5 s: the chart gets rows and then new ones.
    wait_for_change(chart, seconds=40)
    assert int(chart.get_attribute("data-rows")) >= 1

    # It was saved: a reload shows it again.
    page.reload()
    expect(page.locator('[data-testid="dashboard-title"]')).to_contain_text(name)
    expect(page.locator('[data-testid="chart"][data-type="line"]')).to_have_count(1)

    # The demo's own dashboard: every chart gets data.
    page.goto(base + "/#/dashboards")
    page.locator('[data-testid="dashboard-list"] a', has_text="Shop live").click()
    charts = page.locator('[data-testid="chart"]')
    expect(charts).to_have_count(9)
    bars = page.locator('[data-testid="chart"][data-type="bar"]')
    expect(bars).to_have_count(3)
    wait_for_change(bars.nth(0))
    # The unified customer profile (a table joined with two streams, then
    # a top-N over it) moves too.
    wait_for_change(bars.nth(1))

    assert not errors, "errors in the page:\n" + "\n".join(errors)


@pytest.mark.timeout(120)
def test_the_console_fits_a_narrow_screen(page_with_errors):
    page, errors, base = page_with_errors
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(base + "/#/topics")
    expect(page.locator('tr[data-topic="orders"]')).to_be_visible()
    expect(page.locator('a[data-nav="sql"]')).to_be_visible()
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"the page is {overflow}px wider than a phone screen"
    assert not errors, "errors in the page:\n" + "\n".join(errors)
