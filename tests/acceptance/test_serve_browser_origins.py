"""A real browser page on another origin tries to drive and read `intake serve`: nothing changes.

serve runs as an operator starts it on a laptop: on loopback, without
INTAKE_ADMIN_TOKEN. A page from a second local origin (another port, as
any site the operator visits could be) fires what a page can fire without
the token: an HTML form, no-cors fetches with a form or plain-text body, a
beacon, a CORS read. Then a DNS-rebinding page: chromium resolves a foreign
name to 127.0.0.1, so a page under that name reaches serve "same-origin"
and runs fetches from there. Pools, dead letters and DB1 as a whole must be
exactly as before, and no answer may carry data.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.acceptance.browser_support import chromium
from tests.acceptance.serve_support import dead_letter, serving
from tests.conftest import intake, pool_spec, snapshot, write_config

pytestmark = pytest.mark.slow

BUYER = "buyer-5d2e"
REBIND_NAME = "rebind.evil.test"

# Each attack records what the page could see of its answer in window.results.
ATTACKER_PAGE = """<!doctype html>
<meta charset="utf-8">
<title>a page on another origin</title>
<iframe name="sink"></iframe>
<form id="pause" method="POST" action="{serve}/api/pools/live/pause" target="sink"
      enctype="text/plain"><input name='{{"x":"' value='"}}'></form>
<form id="purge" method="POST" action="{serve}/api/dlq/purge" target="sink"
      enctype="application/x-www-form-urlencoded"><input name="confirm" value="purge"></form>
<script>
window.results = {{}};
async function attempt(name, run) {{
  try {{
    const answer = await run();
    const opaque = answer instanceof Response && answer.type === "opaque";
    window.results[name] = answer instanceof Response
      ? answer.type + ":" + answer.status + ":" + (opaque ? "" : await answer.text())
      : String(answer);
  }} catch (err) {{
    window.results[name] = "refused:" + err.name;
  }}
}}
(async () => {{
  const serve = "{serve}";
  await attempt("purge-text-plain", () => fetch(serve + "/api/dlq/purge", {{
    method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
    body: JSON.stringify({{confirm: "purge"}})}}));
  await attempt("pause-form-encoded", () => fetch(serve + "/api/pools/live/pause", {{
    method: "POST", mode: "no-cors",
    headers: {{"Content-Type": "application/x-www-form-urlencoded"}}, body: "a=b"}}));
  await attempt("replay-no-body", () => fetch(serve + "/api/dlq/replay", {{
    method: "POST", mode: "no-cors"}}));
  await attempt("settings-json", () => fetch(serve + "/api/pools/live/settings", {{
    method: "PATCH", headers: {{"Content-Type": "application/json"}},
    body: JSON.stringify({{batch_size: 1}})}}));
  await attempt("beacon-purge", () => navigator.sendBeacon(
    serve + "/api/dlq/purge", JSON.stringify({{confirm: "purge"}})));
  await attempt("read-dlq", () => fetch(serve + "/api/dlq"));
  await attempt("read-metrics", () => fetch(serve + "/metrics"));
  document.getElementById("pause").submit();
  await new Promise((resolve) => setTimeout(resolve, 700));
  document.getElementById("purge").submit();
  await new Promise((resolve) => setTimeout(resolve, 700));
  window.done = true;
}})();
</script>
"""

# Run in a page that DNS rebinding put on serve's address under a foreign name.
REBOUND_SCRIPT = """
const done = arguments[arguments.length - 1];
const results = {};
const attempts = {
  "read-dlq": () => fetch("/api/dlq"),
  "read-status": () => fetch("/api/status"),
  "read-metrics": () => fetch("/metrics"),
  "pause-json": () => fetch("/api/pools/live/pause", {
    method: "POST", headers: {"Content-Type": "application/json"}, body: "{}"}),
  "purge-json": () => fetch("/api/dlq/purge", {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({confirm: "purge"})}),
};
(async () => {
  for (const [name, run] of Object.entries(attempts)) {
    try {
      const answer = await run();
      results[name] = answer.status + ":" + await answer.text();
    } catch (err) {
      results[name] = "refused:" + err.name;
    }
  }
  done(results);
})();
"""


@contextmanager
def attacker_site(serve_url: str) -> Iterator[str]:
    """A second local origin serving the attacker's page; yields its URL."""
    body = ATTACKER_PAGE.format(serve=serve_url).encode()

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_a_page_on_another_origin_cannot_drive_or_read_serve(workdir, db1_dsn, db2_dsn):
    cfg = write_config(workdir, db1_dsn, db2_dsn, [pool_spec("live", 10)])
    intake("up", config=cfg, check=True)
    dead_letter(
        db1_dsn, {"idempotency_key": "00000000-0000-0000-0000-00000000000b", "user_id": BUYER}
    )
    before = snapshot(db1_dsn)
    port_rule = f"--host-resolver-rules=MAP {REBIND_NAME} 127.0.0.1"
    with serving(cfg, token=None) as server, chromium(port_rule) as browser:
        with attacker_site(server.url) as page:
            browser.get(page)
            deadline = time.monotonic() + 30
            while not browser.execute_script("return window.done === true"):
                assert time.monotonic() < deadline, browser.execute_script("return window.results")
                time.sleep(0.1)
            results = browser.execute_script("return window.results")
        assert set(results) == {
            "purge-text-plain",
            "pause-form-encoded",
            "replay-no-body",
            "settings-json",
            "beacon-purge",
            "read-dlq",
            "read-metrics",
        }
        # The cross-origin reads are blocked by the browser: nothing came back.
        assert results["read-dlq"] == "refused:TypeError"
        assert results["read-metrics"] == "refused:TypeError"
        assert results["settings-json"] == "refused:TypeError"  # its preflight was not granted

        browser.set_script_timeout(30)
        browser.get(f"http://{REBIND_NAME}:{server.url.rsplit(':', 1)[1]}/")
        rebound = browser.execute_async_script(REBOUND_SCRIPT)
        for name, answer in rebound.items():
            assert answer.startswith("403:"), (name, answer)
            assert BUYER not in answer and "intake_pool" not in answer, (name, answer)
        log = server.log()
    assert "admin_change" not in log and "Traceback" not in log
    assert snapshot(db1_dsn) == before
