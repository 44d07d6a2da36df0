"""A draining worker collects cycles less often, and leaves the collector as it found it."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from intake_cli.engine.drain import worker


@pytest.fixture(autouse=True)
def _thresholds_kept() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_draining_raises_the_thresholds_and_restores_the_processs_own():
    gc.set_threshold(900, 11, 12)
    with worker._fewer_collections():
        assert gc.get_threshold() == worker.GC_THRESHOLDS
    assert gc.get_threshold() == (900, 11, 12)


def test_workers_in_one_process_restore_once_the_last_one_ends():
    gc.set_threshold(900, 11, 12)
    first, second = worker._fewer_collections(), worker._fewer_collections()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert gc.get_threshold() == worker.GC_THRESHOLDS
    second.__exit__(None, None, None)
    assert gc.get_threshold() == (900, 11, 12)


def test_a_failing_drain_restores_them_too():
    gc.set_threshold(900, 11, 12)
    with pytest.raises(RuntimeError), worker._fewer_collections():
        raise RuntimeError("DB1 lost")
    assert gc.get_threshold() == (900, 11, 12)
