"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against the real services.

Embedded broker + `miko-stream run --llm fake` + `miko-stream serve`, all as subprocesses; posts are produced
to the broker and the page must show them, move its counters and charts, answer a search from its box and drop
a post on its tombstone. `make test` installs Chromium when it is missing; without it this test fails (it
never skips), saying how to install it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers.kafka import produce

from miko_stream.broker import EmbeddedBroker, free_port

CHROMIUM = Path(os.environ.get("MIKO_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
]  # fmt: skip
WAIT_MS = 120_000  # per expectation; each passes as soon as the page shows it (load ~40 seen in CI)
POSTS = [
    ("web-1", "selling 10k followers cheap, dm me for prices #growth"),
    ("web-2", "finally finished my first marathon!!! legs are dead"),
    ("web-3", "our cat knocked the christmas tree over again"),
    ("web-4", "free concert tickets for the first five replies"),
]


def spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        return subprocess.Popen([sys.executable, "-m", "miko_stream", *args], stdout=output, stderr=output, env=env)


def wait_for_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{url}: the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # polling a server that is starting, with a deadline (not a timed assertion)
    pytest.fail(f"{url} did not answer within {timeout_s:.0f}s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def services(fresh_broker: EmbeddedBroker, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Processor (fake model, metrics on) and serve (hash embedder), both against the test's own broker."""
    env = {
        **os.environ,
        "MIKO_KAFKA_BOOTSTRAP": fresh_broker.bootstrap,
        "MIKO_KAFKA_IDEMPOTENCE": "off",
        "MIKO_COMMIT_INTERVAL_S": "0.2",
        "MIKO_API_KEY": "browser-test-key",
    }
    web, metrics = free_port(), free_port()
    processor_log, serve_log = tmp_path / "processor.log", tmp_path / "serve.log"
    processes = [
        spawn(["run", "--llm", "fake:5", "--vision", "none", "--metrics-port", str(metrics)], processor_log, env),
        spawn(
            ["serve", "--port", str(web), "--index-dir", str(tmp_path / "index"), "--embedding-model", "hash:256",
             "--snapshot-interval", "2"],
            serve_log, env,
        ),
    ]  # fmt: skip
    try:
        wait_for_http(f"http://127.0.0.1:{web}/healthz", processes[1], serve_log)
        wait_for_http(f"http://127.0.0.1:{metrics}/metrics", processes[0], processor_log)
        yield {
            "url": f"http://127.0.0.1:{web}",
            "metrics": f"http://127.0.0.1:{metrics}/metrics",
            "bootstrap": fresh_broker.bootstrap,
            "key": env["MIKO_API_KEY"],
        }
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def post_records() -> list[tuple[bytes | None, bytes | None]]:
    records: list[tuple[bytes | None, bytes | None]] = [
        (post_id.encode(), json.dumps({"id": post_id, "text": text}).encode()) for post_id, text in POSTS
    ]
    return [*records, (b"broken", b"{not json")]


def produce_now(bootstrap: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    """Produce from a thread of its own: Playwright's sync API runs an event loop in this one."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, produce(bootstrap, "miko.posts", records)).result(timeout=120)


def launch_chromium(playwright: object, profile: Path) -> object:
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: `make test` installs it (apt-get install -y chromium "
            "chromium-driver, as root); or point MIKO_CHROMIUM at a Chromium binary"
        )
    return playwright.chromium.launch_persistent_context(  # type: ignore[attr-defined]
        str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
        viewport={"width": 1280, "height": 800}, timeout=180_000,
    )  # fmt: skip


@pytest.mark.timeout(900)  # the page needs well under a minute; this only bounds a hang on a loaded machine
def test_dashboard_shows_the_live_stream_in_a_browser(services: dict[str, str], tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, tmp_path / "chromium-profile")
        browser.set_default_timeout(WAIT_MS)  # type: ignore[attr-defined]  # waits, clicks, navigation, functions
        try:
            page = browser.new_page()  # type: ignore[attr-defined]
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            # The key is given once in the address; the page keeps it and removes it from the address bar.
            page.goto(f"{services['url']}/?key={services['key']}")
            expect(page.locator("#conn-text")).to_have_text("live")
            assert "key=" not in page.url
            expect(page.locator('.pill[data-service="broker"]')).to_have_text("broker: ok")

            produce_now(services["bootstrap"], post_records())

            # The posts appear as they are indexed, with their intentions, status and a link to /posts/{id}.
            for post_id, _ in POSTS:
                card = page.locator(f'article.post[data-post-id="{post_id}"]')
                expect(card).to_be_visible()
                expect(card.locator("li")).to_have_count(10)
                expect(card.locator(f'a[href="/posts/{post_id}"]')).to_be_visible()
            expect(page.locator("article.post .badge").first).to_have_text("ok")
            # Counters and charts move.
            expect(page.locator("#c-events-out")).to_have_text(str(len(POSTS)))
            expect(page.locator("#c-posts-in")).to_have_text(str(len(POSTS) + 1))
            expect(page.locator("#c-dead-letters")).to_have_text("1")
            expect(page.locator("#dlq-stages")).to_contain_text("decode: 1")
            page.wait_for_function(
                "() => window.mikoDashboard.state.points.some(p => p.events_out > 0 && p.e2e.p50 !== null)",
                timeout=WAIT_MS,
            )
            page.wait_for_function(
                "() => Number(document.getElementById('chart-throughput').dataset.points) > 2", timeout=WAIT_MS
            )
            expect(page.locator("#chart-throughput canvas")).to_have_count(1)
            expect(page.locator("#acceptance .bar")).to_have_count(10)
            for group in ("processor", "indexer"):  # lag per partition, drained to 0 once all is processed
                expect(page.locator(f'#lag tr:has-text("{group}") td').nth(1)).to_contain_text("0: 0")
                expect(page.locator(f'#lag tr:has-text("{group}") td').nth(2)).to_have_text("0")
            page.screenshot(path=str(tmp_path / "dashboard.png"))

            # A search from the box, with and without a relation filter.
            wanted = page.locator('article.post[data-post-id="web-1"] li.verified span:nth-child(2)').first
            query = wanted.inner_text()
            page.fill("#search-q", query)
            page.click("#search-form button")
            expect(page.locator("#search-results li").first).to_contain_text(query)
            page.select_option("#search-relation", "xWant")
            page.click("#search-form button")
            expect(page.locator("#search-title")).to_contain_text("in xWant")
            expect(page.locator("#search-results li").first).to_contain_text("xWant:")

            # "similar posts" from a post.
            page.locator('article.post[data-post-id="web-2"] .similar-btn').click()
            expect(page.locator('article.post[data-post-id="web-2"] .similar li').first).to_be_visible()

            # A tombstone removes the post from the page.
            produce_now(services["bootstrap"], [(b"web-3", None)])
            expect(page.locator('article.post[data-post-id="web-3"]')).to_have_count(0)
            expect(page.locator("article.post")).to_have_count(len(POSTS) - 1)

            # On a phone the page is one column, without sideways scrolling (the key is remembered).
            phone = browser.new_page()  # type: ignore[attr-defined]
            phone.set_viewport_size({"width": 390, "height": 844})
            phone.on("pageerror", lambda error: errors.append(str(error)))
            phone.goto(services["url"])
            expect(phone.locator("article.post")).to_have_count(len(POSTS) - 1)
            phone.wait_for_function("() => Number(document.getElementById('chart-nodes').dataset.points) > 0")
            assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
            phone.screenshot(path=str(tmp_path / "dashboard-phone.png"), full_page=True)
            # Chromium reports a benign "ResizeObserver loop completed…" when layout settles slowly (a busy CI).
            assert not [error for error in errors if "ResizeObserver loop" not in error], errors
        finally:
            browser.close()  # type: ignore[attr-defined]
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000

    # The processor's own Prometheus metrics counted the same posts.
    metrics = httpx.get(services["metrics"], timeout=10).text
    assert f"miko_stream_posts_processed_total {float(len(POSTS))}" in metrics
    assert 'miko_stream_posts_dead_lettered_total{stage="decode"} 1.0' in metrics
    assert "miko_stream_tombstones_total 1.0" in metrics
    assert 'miko_intentions_total{relation="xWant",verified="true"}' in metrics
    assert "miko_node_seconds_bucket" in metrics
