"""Reading the YAML files users write (scenarios, personas, teaching scenarios), safely.

`load_yaml(path, what)` returns the parsed document or raises a one-line `UserError` naming the
file (and line, where there is one) for everything a hostile or careless file can do: a file
that is missing, unreadable, huge, not UTF-8 (UTF-16/32, Latin-1, binary), malformed YAML, a
duplicate mapping key (YAML would silently keep the last one), nesting deeper than
`MAX_DEPTH`, recursive aliases, or aliases that expand to more than `MAX_NODES` values (an
"alias bomb" parses in microseconds into shared references and only explodes later, when
something walks or serialises the data). Only PyYAML's safe tags are constructed.
"""

from __future__ import annotations

import codecs
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from personae.errors import UserError

#: Deepest nesting of mappings and lists accepted (scenario files use fewer than 10 levels).
MAX_DEPTH = 64
#: Most values a document may hold once every alias is expanded.
MAX_NODES = 100_000
#: Largest file read (scenario and persona files are a few kilobytes).
MAX_BYTES = 16 * 1024 * 1024

_MERGE_TAG = "tag:yaml.org,2002:merge"
_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),  # before UTF-16 LE: its BOM starts with that one
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


class _LimitError(ComposerError):
    """A document over one of the limits (depth, size, recursion)."""


class _DuplicateKeyError(ConstructorError):
    """A mapping that names the same key twice."""


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expansion(root: Node) -> None:
    """Raise `_LimitError` if `root` is recursive or expands to more than `MAX_NODES` nodes.

    Aliases make the node graph a DAG with shared children; its expanded size (what every
    consumer that walks the data pays) is computed once per distinct node.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in _children(node))
            if sizes[key] > MAX_NODES:
                raise _LimitError(
                    None,
                    None,
                    f"aliases expand to more than {MAX_NODES:,} values (an alias bomb?)",
                    node.start_mark,
                )
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise _LimitError(
                None, None, "recursive alias (a value that contains itself)", node.start_mark
            )
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)


class SafeLimitedLoader(yaml.SafeLoader):
    """PyYAML's `SafeLoader` that also refuses duplicate keys, deep nesting and alias bombs."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(AliasEvent):
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _LimitError(
                    None,
                    None,
                    f"nested more than {MAX_DEPTH} levels deep",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> Node | None:
        node = super().compose_document()
        if node is not None:
            _check_expansion(node)
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        if isinstance(node, MappingNode):
            seen: dict[Any, Node] = {}
            for key_node, _ in node.value:
                # merge keys (`<<: *base`) may legitimately be overridden by explicit keys
                if key_node.tag == _MERGE_TAG or not isinstance(key_node, ScalarNode):
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable: the base class reports it
                    continue
                if first is not None:
                    raise _DuplicateKeyError(
                        None,
                        None,
                        f"duplicate key {key!r} (first at line {first.start_mark.line + 1})",
                        key_node.start_mark,
                    )
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _decode(raw: bytes, path: Path, what: str) -> str:
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            raise UserError(
                f"{what} is {encoding} text; personae reads UTF-8",
                where=str(path),
                fix=f"save it as UTF-8, e.g. iconv -f {encoding} -t UTF-8 {path} > NEW.yaml",
            )
    if b"\x00" in raw:
        line = raw[: raw.index(b"\x00")].count(b"\n") + 1
        raise UserError(
            f"{what} contains NUL bytes (UTF-16 or UTF-32 text, or not a text file)",
            where=f"{path}:{line}",
            fix="save it as UTF-8 text",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{what} is not UTF-8 text (byte 0x{raw[exc.start]:02X} cannot be decoded)",
            where=f"{path}:{line}",
            fix="save it as UTF-8 (e.g. iconv -f LATIN1 -t UTF-8)",
        ) from None
    return text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is harmless


def _read_bytes(path: Path, what: str) -> bytes:
    if not path.exists():
        raise UserError(f"{what} not found", where=str(path), fix="check the path")
    if not path.is_file():
        raise UserError(f"{what} is not a file", where=str(path), fix="pass a YAML file")
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise UserError(
                f"{what} is {size:,} bytes; YAML files here are at most {MAX_BYTES:,}",
                where=str(path),
                fix="check that this is the right file",
            )
        return path.read_bytes()
    except OSError as exc:
        raise UserError(
            f"cannot read {what}: {exc.strerror or exc}",
            where=str(path),
            fix="check the file's permissions",
        ) from None


def _line_of(text: str, position: int) -> int:
    return text.count("\n", 0, position) + 1


def parse_yaml(text: str, where: str) -> Any:
    """Parse one YAML document with the limits of `load_yaml` (raises `UserError`).

    Args:
        text: The document.
        where: What to name in errors (a file path); the line number is appended.
    """
    loader: SafeLimitedLoader | None = None
    try:
        loader = SafeLimitedLoader(text)  # the reader checks for control characters here
        return loader.get_single_data()
    except (_LimitError, _DuplicateKeyError) as exc:
        mark = exc.problem_mark
        fix = (
            "remove or rename one of them (YAML keeps only the last)"
            if isinstance(exc, _DuplicateKeyError)
            else "write the values out plainly"
        )
        raise UserError(
            str(exc.problem), where=f"{where}:{mark.line + 1}" if mark else where, fix=fix
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.context.startswith("expected a single document"):
            problem = "more than one document (a second '---')"
        raise UserError(
            f"malformed YAML: {problem}",
            where=f"{where}:{mark.line + 1}" if mark else where,
            fix="fix the YAML syntax",
        ) from None
    except yaml.reader.ReaderError as exc:
        char = exc.character if isinstance(exc.character, int) else 0
        raise UserError(
            f"malformed YAML: control character U+{char:04X} is not allowed",
            where=f"{where}:{_line_of(text, exc.position)}",
            fix="remove it (save the file as plain UTF-8 text)",
        ) from None
    except yaml.YAMLError as exc:
        raise UserError(
            f"malformed YAML: {str(exc).splitlines()[0]}", where=where, fix="fix the YAML syntax"
        ) from None
    except RecursionError:  # pragma: no cover - MAX_DEPTH keeps composition shallow
        raise UserError(
            "nested too deeply", where=where, fix="write the values out plainly"
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


def load_yaml(path: str | Path, what: str = "YAML file") -> Any:
    """Read and parse the YAML file at `path`, refusing anything unsafe.

    Args:
        path: The file.
        what: What the file is, for error messages (e.g. "scenario file").

    Returns:
        The parsed document (None for an empty file).

    Raises:
        UserError: a missing, unreadable, oversized or non-UTF-8 file, malformed YAML, a
            duplicate key, nesting deeper than `MAX_DEPTH` or aliases expanding past
            `MAX_NODES` values; one line naming the file and line.
    """
    path = Path(path)
    text = _decode(_read_bytes(path, what), path, what)
    return parse_yaml(text, str(path))


def cli_value(raw: str) -> Any:
    """A value given on the command line (`--set KEY=VALUE`), read as a YAML scalar or flow
    collection (`3`, `0.2`, `true`, `null`, `[a, b]`, `{k: v}`); text that is not valid YAML
    is kept as it is."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
