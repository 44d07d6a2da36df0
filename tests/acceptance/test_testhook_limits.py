"""`intake webhook-server`'s rate limit and outages in its own process, through the
WebhookServer helper the tests and benchmarks use (no database)."""

from __future__ import annotations

from email.utils import parsedate_to_datetime

import httpx
import pytest

from intake_cli.tools.webhook_process import WebhookServer


def pay(client: httpx.Client, url: str, key: str) -> httpx.Response:
    return client.post(url, json={"idempotency_key": key}, headers={"Idempotency-Key": key})


def test_limits_and_outages_from_the_command_line_survive_a_restart():
    with (
        WebhookServer(rate_limit=2, retry_after="date", outage="503") as server,
        httpx.Client(timeout=10) as client,
    ):
        shown = server.script()
        assert (shown["rate_limit"], shown["retry_after"], shown["outage"]) == (2, "date", "503")
        assert pay(client, server.url, "down").status_code == 503

        server.script(outage=None)
        # At most two a window: five quick calls span at most two windows.
        answers = [pay(client, server.url, f"k{n}") for n in range(5)]
        limited = [a for a in answers if a.status_code == 429]
        assert limited
        assert parsedate_to_datetime(limited[0].headers["Retry-After"]).tzinfo is not None

        server.script(outage="drop")
        with pytest.raises(httpx.RemoteProtocolError):
            pay(client, server.url, "dropped")

        server.stop()
        server.start()
        # The restarted process keeps the script as last changed.
        assert server.script()["outage"] == "drop"
        assert server.script()["rate_limit"] == 2
        server.script(outage=None)
        assert pay(client, server.url, "after").status_code == 200

        calls = server.calls()
        assert calls["total"] == 8
        assert calls["by_status"]["503"] == 1
        assert calls["by_status"]["429"] == len(limited)
        assert calls["by_status"]["0"] == 1
        assert calls["by_status"]["200"] == 5 - len(limited) + 1
        assert server.by_status() == calls["by_status"]
        # Refused calls decided nothing about their keys, before the restart or after.
        assert "down" not in calls["per_key"] and "dropped" not in calls["per_key"]
        assert sum(calls["per_key"].values()) == 5 - len(limited) + 1
