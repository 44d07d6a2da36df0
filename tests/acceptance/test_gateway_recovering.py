"""`intake gateway` across a real DB1 crash: while the inventory is lost, every claim is
`503 recovering` with Retry-After and takes nothing; after `intake recover` buyers claim
again and a buyer from before the crash gets their own unit back."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from tests.acceptance.crash_support import CrashEvent, crash_event
from tests.acceptance.gateway_support import running_gateway, token
from tests.conftest import intake

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _claim(url: str, buyer: str) -> httpx.Response:
    return httpx.post(url, headers={"Authorization": f"Bearer {token(buyer)}"}, timeout=30)


def _claim_after_restart(url: str, buyer: str) -> httpx.Response:
    """The first answer that came from DB1: while the gateway's connections from
    before the crash are found broken, it answers `unavailable` (also 503)."""
    deadline = time.monotonic() + 60
    while True:
        response = _claim(url, buyer)
        if response.json().get("error") != "unavailable" or time.monotonic() > deadline:
            return response
        time.sleep(0.5)


def _held(event: CrashEvent) -> list[tuple]:
    return event.rows(
        event.db1,
        "select locked_by, unit_no from intake.allocations"
        " where pool_id = 'drop' and status = 'locked' order by unit_no",
    )


def _queued(event: CrashEvent) -> list[tuple]:
    return event.rows(event.db1, "select message->>'user_id' from pgmq.q_intents order by msg_id")


def _claim_until_whole(url: str, buyer: str) -> httpx.Response:
    deadline = time.monotonic() + 30
    while True:
        response = _claim(url, buyer)
        if response.json().get("outcome") != "recovering" or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def test_claims_over_http_answer_recovering_after_a_db1_crash_and_the_gateway_rebuilds(
    workdir: Path,
) -> None:
    """No drain worker runs and pg_cron's maintenance is off: the gateway itself
    rebuilds the pool once its claims answer `recovering`."""
    with crash_event(workdir, "gateway-crash", "http://127.0.0.1:9/validate", 20) as event:
        settings = yaml.safe_load(event.config.read_text())
        settings["gateway"] = {"per_ip_rate": 1000, "per_ip_burst": 1000}
        event.config.write_text(yaml.safe_dump(settings, sort_keys=False))
        early, late = str(uuid.uuid4()), str(uuid.uuid4())
        with running_gateway(event.config, event.db1, event.db2) as gw:
            first = _claim(gw.claim_url(), early)
            assert (first.status_code, first.json()["outcome"]) == (200, "claimed"), first.text
            unit = first.json()["unit_no"]
            # Only the gateway may rebuild the pool.
            event.stop_maintenance()
            event.crash("immediate")

            recovering = _claim_after_restart(gw.claim_url(), late)
            early_after = _claim_until_whole(gw.claim_url(), early)
            # The `recovering` answer took nothing: only the buyer from before holds a unit.
            between = (_held(event), _queued(event))
            late_after = _claim(gw.claim_url(), late)
            after = (_held(event), _queued(event))
            recover = intake("recover", "--json", config=event.config, check=True)
            triggers = event.rows(event.db1, "select trigger from intake.inventory_rebuilds")

    assert recovering.status_code == 503, recovering.text
    assert recovering.headers["Retry-After"] == "2"
    assert recovering.json()["outcome"] == "recovering"
    assert recovering.json()["unit_no"] is None
    assert (early_after.status_code, early_after.json()["outcome"]) == (200, "already_claimed")
    assert early_after.json()["unit_no"] == unit
    assert between == ([(early, unit)], [(early,)])
    assert (late_after.status_code, late_after.json()["outcome"]) == (200, "claimed")
    assert after == (
        sorted([(early, unit), (late, late_after.json()["unit_no"])], key=lambda r: r[1]),
        [(early,), (late,)],
    )
    assert triggers[-1:] == [("gateway",)]
    assert '"rebuilt": null' in recover.stdout
