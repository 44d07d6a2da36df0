"""`intake init`: the commented example configuration, written where the operator asks."""

from __future__ import annotations

from pathlib import Path

from intake_cli.platform.config.settings import DEFAULT_CONFIG
from intake_cli.platform.errors import UsageError


def write_example(path: Path, *, force: bool = False) -> None:
    """Write the commented example configuration to `path` (`intake init`).

    Refused, with nothing written, unless `path` names a regular file to
    create, or one to overwrite with `force`, in a directory that exists.
    """
    example = Path(__file__).resolve().parents[4] / "examples" / "intake.yaml"
    packaged = Path(__file__).parents[2] / "example.yaml"
    text = (example if example.exists() else packaged).read_text(encoding="utf-8")
    try:
        if path.is_dir():
            raise UsageError(
                f"{path} is a directory: name the file to write, e.g. {path / DEFAULT_CONFIG}"
            )
        if path.exists() or path.is_symlink():
            if not force:
                raise UsageError(f"{path} exists; pass --force to overwrite it")
            if not path.is_file():
                raise UsageError(f"{path} is not a regular file: --force overwrites only a file")
        if not path.parent.is_dir():
            raise UsageError(f"{path.parent} is not a directory: create it first")
        # "x" without --force: a file that appeared since the check is not overwritten.
        with path.open("w" if force else "x", encoding="utf-8") as stream:
            stream.write(text)
    except FileExistsError:
        raise UsageError(f"{path} exists; pass --force to overwrite it") from None
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
