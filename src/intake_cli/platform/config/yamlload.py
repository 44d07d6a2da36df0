"""Reading intake.yaml into plain data, refusing what PyYAML would silently get wrong or
pay too much for; what the data means is checked elsewhere."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from intake_cli.platform.config.problems import _show
from intake_cli.platform.errors import ConfigError

# What reading intake.yaml may cost. A real file is a few kB and a few levels
# deep; these bounds are far above any of them, and far below what would
# exhaust memory or the stack ("billion laughs", 60,000 nested brackets).
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_DEPTH = 32
# Counted with every alias expanded: what the document would be written out.
MAX_CONFIG_NODES = 100_000


class _Refused(yaml.MarkedYAMLError):
    """A document intake will not read, and where in it reading stopped."""

    def __init__(self, problem: str, mark: yaml.Mark) -> None:
        super().__init__(problem=problem, problem_mark=mark)


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses what it would silently get wrong or pay too much for.

    A key repeated in one mapping (the last one would silently win), nesting
    deeper than MAX_CONFIG_DEPTH (the composer recurses: 60,000 levels end in
    a RecursionError), a document larger than MAX_CONFIG_NODES once its
    aliases are expanded ("billion laughs"), an alias to the node that holds
    it, and a value PyYAML's own constructors choke on (`2024-13-01`).
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        # Expanded size of every node composed so far, by id: an alias costs
        # its anchor's whole size again, counted without building anything.
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        mark = self.peek_event().start_mark
        alias = self.check_event(yaml.AliasEvent)
        self._depth += 1
        if self._depth > MAX_CONFIG_DEPTH:
            raise _Refused(f"nested more than {MAX_CONFIG_DEPTH} levels deep", mark)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if alias:
            if id(node) not in self._sizes:
                raise _Refused("an alias refers to the node that contains it", mark)
            return node
        size = 1
        if isinstance(node, yaml.SequenceNode):
            size += sum(self._sizes[id(item)] for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            size += sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
        if size > MAX_CONFIG_NODES:
            raise _Refused(
                f"expands to more than {MAX_CONFIG_NODES:,} values (aliases counted "
                "each time they are used)",
                mark,
            )
        self._sizes[id(node)] = size
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Mark] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue  # `<<: *defaults` is meant to be overridden
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue  # unhashable: SafeLoader's own error says so
                if earlier is not key_node.start_mark:
                    raise _Refused(
                        f"key {_show(key)} is repeated in this mapping (first on line "
                        f"{earlier.line + 1}): the last one would silently win",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            kind = node.tag.rsplit(":", 1)[-1]
            raise _Refused(f"cannot read this {kind} value ({exc})", node.start_mark) from None


def _read(path: Path) -> str:
    """The file's text, read only if it is a regular file of sensible size, in UTF-8."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; a regular
        # file reads the same either way.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError("file not found (create one with `intake init`)", str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}", str(path)) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(
            "not a regular file (a directory, device or pipe): write the configuration "
            "to a file and name that",
            str(path),
        )
    with os.fdopen(fd, "rb") as stream:
        try:
            data = stream.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read the file: {exc.strerror}", str(path)) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"larger than {MAX_CONFIG_BYTES // 1024:,} KiB: not an intake configuration",
            str(path),
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"line {line}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}): "
            "save the file as UTF-8",
            str(path),
        ) from None


def _document(text: str, path: Path) -> Any:
    loader = None
    try:
        # The reader checks every character as it is built: inside the try.
        loader = _Loader(text)
        return loader.get_single_data()
    except _Refused as exc:
        mark = exc.problem_mark
        assert mark is not None  # _Refused is always raised with its mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: "
        raise ConfigError(f"{where}{exc.problem}", str(path)) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise ConfigError(
            f"line {line}: malformed YAML (character U+{code:04X} is not allowed in YAML)",
            str(path),
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}malformed YAML ({problem})", str(path)) from None
    finally:
        if loader is not None:
            loader.dispose()
