"""The embedded default end to end: clusters started from the installed binaries."""

from __future__ import annotations

import json
import socket

import pytest
import yaml

from tests.conftest import intake, pool_spec

pytestmark = pytest.mark.slow


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_embedded_up_claim_status_down(workdir):
    event = workdir / "event"
    event.mkdir(mode=0o755)
    cfg = event / "intake.yaml"
    cfg.write_text(yaml.safe_dump({"pools": [pool_spec("emb", 300)]}))

    first = json.loads(intake("up", "--json", config=cfg, check=True).stdout)
    assert first["embedded"] is True and first["pgmq"]["source"] == "bundled-sql"
    clusters = json.loads((event / ".intake" / "clusters.json").read_text())
    ports = {name: spec["port"] for name, spec in clusters.items()}
    assert set(ports) == {"db1", "db2"} and all(port_open(p) for p in ports.values())

    again = json.loads(intake("up", "--json", config=cfg, check=True).stdout)
    assert again["migrations_applied"] == [] and again["seeded"][0]["added"] == 0
    assert json.loads((event / ".intake" / "clusters.json").read_text()) == clusters

    herd = json.loads(
        intake(
            "burst",
            "emb",
            "--users",
            "400",
            "--concurrency",
            "40",
            "--json",
            config=cfg,
            check=True,
        ).stdout
    )
    assert herd["outcomes"] == {"claimed": 300, "sold_out": 100}

    status = json.loads(intake("status", "--json", config=cfg, check=True).stdout)
    # Nothing metered the webhook: its governor is quiet.
    [webhook] = [pool.pop("webhook") for pool in status["pools"]]
    assert (webhook["governed"], webhook["breaker"], webhook["calls_total"]) == (False, "closed", 0)
    assert status["pools"] == [
        {
            "pool_id": "emb",
            "inventory": 300,
            "available": 0,
            "locked": 300,
            "consumed": 0,
            "rejected": 0,
            "dead_lettered": 0,
            "paused": False,
            "recovering": False,
            "last_rebuild": None,
        }
    ]
    assert status["queue"]["depth"] == 300 and status["dlq"]["depth"] == 0
    assert status["pgmq"] == {
        "source": "bundled-sql",
        "version": "1.13.0",
        "version_from": "recorded at install",
    }

    refused = intake("down", config=cfg)
    assert refused.returncode == 6 and all(port_open(p) for p in ports.values())

    intake("down", "--force", config=cfg, check=True)
    assert not (event / ".intake").exists()
    assert not any(port_open(p) for p in ports.values())
    # Nothing left to tear down is not an error.
    assert intake("down", config=cfg).returncode == 0
    gone = intake("status", config=cfg)
    assert gone.returncode == 5 and "run `intake up` first" in gone.stderr
