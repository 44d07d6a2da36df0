"""The HTTP log drain: down → the worker keeps going and counts drops; back → lines arrive."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from intake_cli.platform.embedded import free_port
from intake_cli.tools.webhook_process import WebhookServer
from tests.acceptance.drain_support import Event, draining, stop, wait_for
from tests.conftest import pool_spec, run_intake, write_config

pytestmark = pytest.mark.slow


class Receiver:
    """A log collector on loopback that keeps every JSON line it is sent."""

    def __init__(self, port: int) -> None:
        self.lines: list[dict] = []
        lines = self.lines

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                lines.extend(json.loads(line) for line in body.decode().splitlines() if line)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_log_drain_down_then_back(workdir, db1_dsn, db2_dsn):
    port = free_port()
    with WebhookServer() as webhook:
        config = write_config(
            workdir,
            db1_dsn,
            db2_dsn,
            [pool_spec("drop", 60, validation_webhook_url=webhook.url, batch_size=10)],
            log_drain_url=f"http://127.0.0.1:{port}/logs",
            log_drain_buffer=20,
        )
        run_intake("up", config=config, check=True)
        event = Event(config, db1_dsn, db2_dsn, "drop")
        event.claim(30, prefix="early")
        with draining(event, "--log-level", "info", "--json") as [worker]:
            # The drain is down: nothing listens on its port; the worker goes on.
            wait_for(lambda: len(event.tickets()) == 30, 30, "30 commits with the drain down")
            receiver = Receiver(port)
            try:
                # Back: what the bounded buffer kept arrives first…
                wait_for(lambda: len(receiver.lines) > 0, 10, "the kept lines")
                # …and then the lines about intents claimed from now on.
                event.claim(30, prefix="late")
                wait_for(
                    lambda: any(line.get("msg_id", 0) > 30 for line in receiver.lines),
                    15,
                    "lines about the late intents",
                )
                wait_for(lambda: len(event.tickets()) == 60, 30, "60 commits")
                out, _ = stop(worker)
            finally:
                receiver.close()
    stats = json.loads(out)
    assert stats["committed"] == 60
    assert stats["log_lines_dropped"] > 0 and stats["log_lines_shipped"] > 0
    about_messages = [line for line in receiver.lines if "msg_id" in line]
    assert about_messages, receiver.lines[:3]
    assert all(line["pool_id"] == "drop" for line in about_messages)
    assert {line["event"] for line in about_messages} >= {"transition"}
