"""The bad-input corpus, in-process: configuration files, CLI arguments, webhook answers.

Each case (tests/corpus/cases.py) must end in its exit code with its message
fragment, no traceback, none of its secrets printed, and nothing on disk
changed. docs/bad-input.md says how to add one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from intake_cli.engine.drain.webhook import WebhookClient, WebhookResult
from intake_cli.platform import config
from intake_cli.platform.db import describe_dsn
from intake_cli.platform.errors import IntakeError
from tests.corpus import cases
from tests.corpus.harness import (
    ScriptedWebhook,
    arguments,
    config_path,
    environment,
    flat,
    run_main,
    tree,
)


def test_the_corpus_is_large_enough_and_named_uniquely():
    ids = [case.id for case in cases.ALL]
    assert len(ids) >= 80
    assert len(set(ids)) == len(ids)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("case", cases.CONFIG, ids=lambda case: case.id)
def test_config_file(case: cases.Case, tmp_path: Path):
    path = config_path(case, tmp_path)
    before = tree(tmp_path)
    with environment(case.env), pytest.raises(IntakeError) as caught:
        config.load(path)
    message = str(caught.value)
    assert caught.value.exit_code == case.exit, message
    assert case.fragment in message
    assert str(path) in message  # the message names the file
    for secret in case.absent:
        assert secret not in message
    assert tree(tmp_path) == before


@pytest.mark.timeout(20)
@pytest.mark.parametrize("case", cases.CLI, ids=lambda case: case.id)
def test_cli_arguments(case: cases.Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("COLUMNS", "200")
    args = arguments(case, tmp_path)
    before = tree(tmp_path)
    with environment(case.env):
        code, output = run_main(args)
    assert code == case.exit, output
    assert case.fragment in flat(output), output
    assert "Traceback" not in output
    for secret in case.absent:
        assert secret not in output
    assert tree(tmp_path) == before


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedWebhook]:
    with ScriptedWebhook() as server:
        yield server


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", cases.WEBHOOK_BODIES, ids=lambda case: case.id)
def test_webhook_answer(case: cases.Case, scripted: ScriptedWebhook):
    """The webhook client's verdict on each answer; the real drain runs a subset
    (tests/acceptance/test_bad_input_corpus.py)."""
    scripted.answer = case.input

    async def ask() -> WebhookResult:
        async with WebhookClient(timeout_s=1.0) as client:
            return await client.validate(scripted.url, {"pool_id": "drop"}, "corpus-key")

    result = asyncio.run(ask())
    assert result.verdict.value == case.outcome, result
    assert case.fragment in result.reason
    assert len(result.reason) <= 300


def test_connection_messages_show_no_password():
    shown = describe_dsn("host=db user=app password=hunter2 sslpassword=hunter3 dbname=x")
    assert "hunter" not in shown and "host=db" in shown
