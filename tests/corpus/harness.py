"""Running corpus cases: files to read, directories to compare, the CLI in-process."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import re
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tests.corpus.cases import Case, Special

VALID_CONFIG = (
    "pools:\n"
    "  - pool_id: drop\n"
    "    inventory: 10\n"
    "    validation_webhook_url: https://pay.example/validate\n"
)
# Rich's and typer's frames and line wrapping, folded away before matching.
_FRAME = re.compile(r"[\s│╭╮╰╯─]+")


def config_path(case: Case, directory: Path) -> Path:
    """Where the case's configuration is: written into `directory`, or the special path."""
    special = case.input
    if not isinstance(special, Special):
        path = directory / "intake.yaml"
        data = special if isinstance(special, bytes) else special.encode("utf-8")
        path.write_bytes(data)
        return path
    if special.what == "dir":
        (directory / "intake.yaml").mkdir()
    elif special.what == "fifo":
        os.mkfifo(directory / "intake.yaml")
    elif special.what != "missing":
        return Path(special.what)
    return directory / "intake.yaml"


def arguments(case: Case, directory: Path) -> list[str]:
    """The case's CLI arguments, after `-c DIR/intake.yaml` unless the case names its own."""
    (directory / "intake.yaml").write_text(VALID_CONFIG)
    args = [arg.replace("{dir}", str(directory)) for arg in case.input]
    return args if args[0] == "-c" else ["-c", str(directory / "intake.yaml"), *args]


def tree(directory: Path) -> dict[str, str]:
    """Every entry under `directory` and what it holds: to prove nothing changed."""
    found = {}
    for path in sorted(directory.rglob("*")):
        name = str(path.relative_to(directory))
        if path.is_symlink() or not path.exists():
            found[name] = "link"
        elif path.is_file():
            found[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            found[name] = "dir" if path.is_dir() else "special"
    return found


def flat(text: str) -> str:
    """`text` on one line, without rich's frames, for matching a fragment."""
    return _FRAME.sub(" ", text)


@contextlib.contextmanager
def environment(env: Mapping[str, str | None]) -> Iterator[dict[str, str]]:
    """os.environ with the case's variables set (None: unset), restored afterwards."""
    saved = dict(os.environ)
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        yield dict(os.environ)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_main(args: list[str]) -> tuple[int, str]:
    """`intake ARGS` through intake_cli.faces.cli.main in this process: (exit code, stderr+stdout).

    Anything but a clean exit (a traceback's exception) propagates and fails the test.
    """
    from intake_cli.faces import cli

    captured = io.StringIO()
    argv = sys.argv
    sys.argv = ["intake", *args]
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
            cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    else:
        code = 0
    finally:
        sys.argv = argv
    return code, captured.getvalue()


class ScriptedWebhook:
    """A loopback HTTP endpoint that answers every request with `answer`, byte for byte.

    `answer` is a WEBHOOK_BODIES input: {"status", "type", "headers", "body",
    "delay_s"}, or {"mode": "close"} (hang up without a word) or
    {"mode": "garbage"} (answer something that is not HTTP). Written on raw
    streams, not a web framework, so it can answer what no framework would.
    """

    def __init__(self) -> None:
        self.answer: dict[str, Any] = {"status": 200, "body": b"{}"}
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/validate"

    def __enter__(self) -> ScriptedWebhook:
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            # Answers still waiting (a too-slow case) end now, and are awaited.
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answer = self.answer
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            if answer.get("mode") == "close":
                return
            if answer.get("mode") == "garbage":
                writer.write(b"THIS IS NOT HTTP\r\n\r\n")
                await writer.drain()
                return
            await asyncio.sleep(answer.get("delay_s", 0))
            body = answer.get("body", b"")
            headers = {
                "Content-Type": answer.get("type", "application/json"),
                "Content-Length": str(len(body)),
                "Connection": "close",
                **answer.get("headers", {}),
            }
            lines = [f"HTTP/1.1 {answer['status']} Scripted"]
            lines += [f"{name}: {value}" for name, value in headers.items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client hung up first: what a too-large or too-slow answer earns
        except asyncio.CancelledError:
            pass  # the server is closing; ending quietly keeps asyncio from logging it
        finally:
            writer.close()
