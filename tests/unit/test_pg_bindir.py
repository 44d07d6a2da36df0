"""Which PostgreSQL server the embedded clusters run on (INTAKE_PG_MAJOR)."""

from __future__ import annotations

from pathlib import Path

import pytest

from intake_cli.platform.embedded import pg_bindir
from intake_cli.platform.errors import EmbeddedClusterError

INSTALLED = sorted(
    (p.parent.parent.name for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")), key=int
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("INTAKE_PG_BIN", raising=False)
    monkeypatch.delenv("INTAKE_PG_MAJOR", raising=False)


@pytest.mark.skipif(not INSTALLED, reason="no Debian-layout PostgreSQL server installed")
def test_an_installed_major_is_used(monkeypatch):
    monkeypatch.setenv("INTAKE_PG_MAJOR", INSTALLED[0])
    assert pg_bindir() == Path("/usr/lib/postgresql") / INSTALLED[0] / "bin"


@pytest.mark.parametrize("major", ["99", "15/../../tmp", "fifteen"])
def test_a_major_that_is_not_installed_is_refused_with_the_fix(monkeypatch, major):
    monkeypatch.setenv("INTAKE_PG_MAJOR", major)
    with pytest.raises(EmbeddedClusterError) as refused:
        pg_bindir()
    assert f"apt-get install postgresql-{major}" in str(refused.value)
    assert refused.value.exit_code == 4


def test_intake_pg_bin_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("INTAKE_PG_BIN", str(tmp_path))
    monkeypatch.setenv("INTAKE_PG_MAJOR", "99")
    assert pg_bindir() == tmp_path
