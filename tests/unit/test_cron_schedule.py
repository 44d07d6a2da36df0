"""The pg_cron schedule rendered for each pg_cron: seconds where 1.5+ has them."""

from __future__ import annotations

import pytest

from intake_cli.engine import telemetry
from intake_cli.faces.watch import sparkline


@pytest.mark.parametrize("version", ["1.5", "1.5.2", "1.6.4"])
def test_pg_cron_15_and_newer_get_a_five_second_schedule(version):
    rendered = telemetry.cron_sql(version)
    assert (
        "select cron.schedule('intake-metrics', '5 seconds', 'select intake.collect_metrics()');"
        in rendered
    )
    assert "collect_metrics_for_a_minute" not in rendered
    assert "'intake-maintenance', '* * * * *', 'select intake.maintain_telemetry()'" in rendered


@pytest.mark.parametrize("version", ["1.4", "1.4-1", "1.3.1"])
def test_older_pg_cron_gets_the_minute_loop(version):
    rendered = telemetry.cron_sql(version)
    assert "'intake-metrics', '* * * * *'" in rendered
    assert "'call intake.collect_metrics_for_a_minute(5)'" in rendered
    assert "'5 seconds'" not in rendered


def test_an_unreadable_version_is_refused():
    with pytest.raises(ValueError, match="pg_cron version not understood"):
        telemetry.cron_sql("devel")


def test_sparkline_scales_to_the_highest_value():
    assert sparkline([0, 50, 100]) == "▁▅█"
    assert sparkline([0, 0]) == "▁▁"
