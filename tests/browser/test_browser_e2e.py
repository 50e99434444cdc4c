"""A real browser against taskgate, as a Better Auth frontend would use it.

Headless Chromium (Debian's package, driven by Playwright) loads `page/index.html` from
its own loopback origin, signs up through a REAL Better Auth server (better-auth with the
jwt() plugin, EdDSA, definePayload with jti and sid), takes its JWT, and calls taskgate
(gunicorn, production mode: PostgreSQL and Redis) with `Authorization: Bearer`, so every
taskgate call is a cross-origin request with a CORS preflight, checked by the browser
itself. taskgate is configured exactly as the README says: BETTER_AUTH_URL and
CORS_ORIGINS only. A second origin, not in CORS_ORIGINS, must not be able to read
taskgate's answers, nor get a write past the preflight.

Needs Chromium (`apt-get install chromium`), Node.js >= 20 (the Better Auth issuer), the
`playwright` Python package (its bundled driver only; no browser download), PostgreSQL and
Redis. Without one of them the tests skip, or fail under CI=true.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
import requests

from tests.interop.issuer import BetterAuthIssuer
from tests.support.servers import Gunicorn
from tests.support.services import redis_key_prefix, require_redis, unavailable

pytestmark = pytest.mark.integration

PAGE_DIR = Path(__file__).resolve().parent / "page"
SCREENSHOT = Path("/tmp/taskgate-browser.png")
BLOCKED_SCREENSHOT = Path("/tmp/taskgate-browser-blocked.png")
TIMEOUT_MS = 20_000  # any single browser wait
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Settings that must come from BETTER_AUTH_URL alone (README), whatever the environment has.
DERIVED_SETTINGS = ("JWKS_URL", "JWT_ISSUER", "JWT_AUDIENCE")


def chromium_executable() -> str | None:
    candidates = (os.environ.get("CHROMIUM_PATH"), shutil.which("chromium"), shutil.which("chromium-browser"))
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


class StaticSite:
    """tests/browser/page/ served by http.server on a loopback port of its own: one origin."""

    def __init__(self) -> None:
        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *_args) -> None:
                pass

        handler = functools.partial(Quiet, directory=str(PAGE_DIR))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True)

    def __enter__(self) -> StaticSite:
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def chromium() -> str:
    executable = chromium_executable()
    if executable is None:
        unavailable("Chromium is needed for the browser tests: apt-get install chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        unavailable("the playwright package is needed for the browser tests (requirements-dev.txt)")
    return executable


@pytest.fixture(scope="module")
def frontend() -> Iterator[StaticSite]:
    with StaticSite() as site:
        yield site


@pytest.fixture(scope="module")
def foreign_site() -> Iterator[StaticSite]:
    """Another origin (another port), NOT in taskgate's CORS_ORIGINS."""
    with StaticSite() as site:
        yield site


@pytest.fixture(scope="module")
def issuer(node_ready, frontend: StaticSite) -> Iterator[BetterAuthIssuer]:
    with BetterAuthIssuer(alg="EdDSA", define_payload=True, trusted_origins=(frontend.origin,)) as running:
        yield running


@pytest.fixture(scope="module")
def redis_prefix() -> Iterator[str]:
    with redis_key_prefix("taskgate-browser") as prefix:
        yield prefix


@pytest.fixture(scope="module")
def taskgate(chromium, postgres_url: str, redis_prefix: str, issuer: BetterAuthIssuer,
             frontend: StaticSite) -> Iterator[Gunicorn]:
    """gunicorn in production mode, configured as the README's "Connect your Better Auth frontend"."""
    server = Gunicorn({
        "APP_ENV": "production",
        "DATABASE_URL": postgres_url,
        "REDIS_URL": require_redis(),
        "REDIS_KEY_PREFIX": redis_prefix,
        "BETTER_AUTH_URL": issuer.url,
        "CORS_ORIGINS": frontend.origin,
        "BETTER_AUTH_SECRET": "",  # JWKS only: the default algorithms are then the asymmetric ones
        "JWT_ALGORITHMS": "",
        "LOG_LEVEL": "WARNING",
    })
    for name in DERIVED_SETTINGS:
        server.env.pop(name, None)
    with server:
        yield server


@pytest.fixture(scope="module")
def browser(chromium: str):
    from playwright.sync_api import sync_playwright

    # Playwright gives every launch a fresh temporary --user-data-dir and removes it on close.
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS,
                                              timeout=TIMEOUT_MS * 2)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.console_lines = []
    page.on("console", lambda message: page.console_lines.append(f"{message.type}: {message.text}"))
    yield page
    context.close()


def app_url(site: StaticSite, issuer: BetterAuthIssuer, taskgate: Gunicorn) -> str:
    return f"{site.origin}/index.html?{urlencode({'issuer': issuer.url, 'api': taskgate.url})}"


def diagnostics(page, issuer: BetterAuthIssuer, taskgate: Gunicorn) -> str:
    return (f"\n--- page ---\n{page.inner_text('body')}\n--- console ---\n" + "\n".join(page.console_lines)
            + f"\n--- issuer ---\n{issuer.stderr_text()[-3000:]}\n--- gunicorn ---\n{taskgate.output()[-3000:]}")


def screenshot(page, tmp_path: Path, keep: Path) -> None:
    shot = tmp_path / keep.name
    page.screenshot(path=str(shot), full_page=True)
    try:
        shutil.copyfile(shot, keep)
    except OSError:
        pass  # only a convenience copy for people looking at it


def test_a_better_auth_frontend_signs_up_and_manages_tasks_through_taskgate(
        page, frontend, issuer, taskgate, tmp_path):
    started = time.monotonic()
    taskgate_responses = []
    page.on("response", lambda r: taskgate_responses.append(r) if r.url.startswith(taskgate.url) else None)
    page.goto(app_url(frontend, issuer, taskgate))
    page.click("#run")
    page.wait_for_selector('#status[data-state="done"], #status[data-state="error"]', timeout=TIMEOUT_MS * 2)
    screenshot(page, tmp_path, SCREENSHOT)
    assert page.get_attribute("#status", "data-state") == "done", diagnostics(page, issuer, taskgate)

    # The user Better Auth created is the user taskgate saw in the token.
    user = page.locator("#user")
    assert user.get_attribute("data-user-id") == user.get_attribute("data-taskgate-user-id") != ""

    # Three created, "alpha" toggled, "bravo" deleted; rendered from the second list.
    items = page.locator("#tasks li")
    assert [(items.nth(i).inner_text(), items.nth(i).get_attribute("data-completed"))
            for i in range(items.count())] == [("alpha", "true"), ("charlie", "false")]
    # Exposed headers are readable cross-origin: X-Total-Count, Location.
    assert page.get_attribute("#tasks", "data-total") == "2"
    assert re.fullmatch(r"/api/v1/tasks/\d+", page.inner_text("#location")), page.inner_text("#location")

    # After logout the same token is refused, and the page can read why.
    after = page.locator("#after-logout")
    assert (after.get_attribute("data-status"), after.get_attribute("data-code")) == ("401", "token_revoked")

    # Every taskgate answer the page read allowed exactly this origin, without credentials.
    assert len(taskgate_responses) >= 9
    for response in taskgate_responses:
        headers = response.all_headers()
        assert headers.get("access-control-allow-origin") == frontend.origin, (response.url, headers)
        assert "access-control-allow-credentials" not in headers, (response.url, headers)
    assert time.monotonic() - started < 45


def test_a_page_from_an_origin_not_in_cors_origins_cannot_use_taskgate(
        page, frontend, foreign_site, issuer, taskgate, tmp_path):
    session = issuer.sign_up(f"foreign-{uuid.uuid4().hex[:12]}@example.com")
    token = issuer.token(session)  # a valid, unrevoked token: only the origin is wrong
    bearer = {"Authorization": f"Bearer {token}"}

    # Control: the same probe from the allowed origin reads the answer...
    page.goto(app_url(frontend, issuer, taskgate))
    assert page.evaluate("token => probe(token)", token) == {"outcome": "ok", "status": "200"}
    # ...but not with cookies (supports_credentials=False): no cookie can ride along.
    with_cookies = page.evaluate("token => probe(token, 'GET', '/api/v1/auth/me', undefined, 'include')", token)
    assert with_cookies["outcome"] == "blocked" and with_cookies["errorName"] == "TypeError", with_cookies
    assert any("Access-Control-Allow-Credentials" in line for line in page.console_lines), page.console_lines

    page.goto(app_url(foreign_site, issuer, taskgate))
    read = page.evaluate("token => probe(token)", token)
    assert read["outcome"] == "blocked" and read["errorName"] == "TypeError", read
    write = page.evaluate("token => probe(token, 'POST', '/api/v1/tasks', {title: 'from a foreign origin'})", token)
    assert write["outcome"] == "blocked" and write["errorName"] == "TypeError", write
    screenshot(page, tmp_path, BLOCKED_SCREENSHOT)
    assert page.get_attribute("#probe", "data-outcome") == "blocked"

    # It is the browser's CORS check that failed (not the network), at the preflight...
    blocked = [line for line in page.console_lines
               if "blocked by CORS policy" in line and f"from origin '{foreign_site.origin}'" in line]
    assert len(blocked) == 2, page.console_lines
    assert all("preflight" in line and "No 'Access-Control-Allow-Origin'" in line for line in blocked), blocked
    # ...so the write was never sent: the user still has no task.
    listed = requests.get(f"{taskgate.url}/api/v1/tasks", headers=bearer, timeout=10)
    assert listed.status_code == 200 and listed.json() == []

    # What the browser saw, in raw HTTP: no CORS headers for the foreign origin's preflight.
    def preflight(origin: str, method: str) -> requests.Response:
        return requests.options(f"{taskgate.url}/api/v1/tasks", timeout=10, headers={
            "Origin": origin, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization,content-type"})

    refused = preflight(foreign_site.origin, "POST")
    assert not any(h.lower().startswith("access-control-") for h in refused.headers), dict(refused.headers)
    allowed = preflight(frontend.origin, "POST")
    assert allowed.headers.get("Access-Control-Allow-Origin") == frontend.origin
    assert "Access-Control-Allow-Credentials" not in allowed.headers


def test_the_interactive_docs_render_the_openapi_document_from_the_service_itself(page, taskgate):
    requested = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(f"{taskgate.url}/docs/")
    page.wait_for_selector(".opblock-summary-path", timeout=TIMEOUT_MS)
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert any("/api/v1/tasks" in path for path in paths), paths
    assert any("/api/v1/auth/backchannel-logout" in path for path in paths), paths
    assert "taskgate" in page.inner_text(".info .title")
    assert all(url.startswith(taskgate.url) for url in requested), requested  # no CDN
    assert not [line for line in page.console_lines if "Content Security Policy" in line], page.console_lines
