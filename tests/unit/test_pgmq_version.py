"""Which pgmq `status` reports: the extension's live version wins over the
version recorded at install; the bundled SQL keeps its recorded one."""

from __future__ import annotations

from intake_cli.engine.schema import PgmqInstall, choose_pgmq


def test_an_updated_extension_shows_its_new_version():
    recorded = PgmqInstall("extension", "1.4.4")
    assert choose_pgmq(recorded, "1.5.1") == PgmqInstall("extension", "1.5.1", live=True)


def test_the_bundled_sql_keeps_the_version_it_was_installed_with():
    recorded = PgmqInstall("bundled-sql", "1.13.0")
    assert choose_pgmq(recorded, None) == recorded
    assert not choose_pgmq(recorded, None).live


def test_an_extension_found_without_a_record_is_still_reported():
    assert choose_pgmq(None, "1.5.1") == PgmqInstall("extension", "1.5.1", live=True)
    assert choose_pgmq(None, None) == PgmqInstall("unknown", None)
