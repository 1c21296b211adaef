"""YAML with lines: the one reader of users' YAML files (specs, recipes, known failures).

A file is composed into YAML nodes, which keep where they were written, and read through typed
accessors (`YamlDoc.string`, `.integer`, `.mapping`, ...) whose every error is a `SpecError`
naming file, line and field: "spec.yaml:7: field 'vm.cpus': expected a whole number, got 'two'".
Nothing here knows what a spec is; the callers say which keys a mapping may hold.

Before anything is read, a file must be a regular file of at most MAX_YAML_BYTES, UTF-8 text,
plain YAML (no tags: `!!python/...`, `!!binary`, `!custom`), say each key of a mapping once
(YAML itself keeps the last of two silently) and hold at most MAX_YAML_NODES values once its
aliases are expanded (a few lines of nested aliases can stand for billions). The rest is up to
the callers.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vmharness.errors import SpecError

Node = yaml.Node
# (file, line) of something read, for messages that name two places.
Loc = tuple[str, int]

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_NULL_TAG = "tag:yaml.org,2002:null"
_TOP_KEY_RE = re.compile(r"^([A-Za-z_][\w-]*)\s*:")
# A spec, recipe or known-failures file is a few KiB (each of the OSG's parameter files is
# 3 KiB, about 100 values): anything near these is no such file, and reading it would only fill
# memory (a composed value costs some hundred bytes) or stall the readers.
MAX_YAML_BYTES = 4 * 1024 * 1024
MAX_YAML_NODES = 200_000


def line_of(node: Node | None) -> int | None:
    """The 1-based line a node starts on."""
    return node.start_mark.line + 1 if node is not None else None


def kind_of(node: Node) -> str:
    """What a node is, for messages: "a mapping", "a list", "nothing" or its text."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == _NULL_TAG:
        return "nothing"
    return shown(node.value)


def shown(text: str, limit: int = 60) -> str:
    """A user's text for a message: quoted, and cut short if long."""
    return repr(text) if len(text) <= limit else repr(text[: limit - 3] + "...")


def is_empty(node: Node | None) -> bool:
    """True for an empty document (or one of only comments) and for an explicit null."""
    return node is None or (isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG)


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice a misspelt word most likely meant, if any is close."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def where(loc: Loc) -> str:
    """A location as "file:line"."""
    return f"{loc[0]}:{loc[1]}"


def section_at(text: str, line: int | None) -> str | None:
    """The top-level key whose section holds `line` (for a syntax error's field)."""
    if not line:
        return None
    for row in reversed(text.splitlines()[:line]):
        m = _TOP_KEY_RE.match(row)
        if m:
            return m.group(1)
    return None


def file_kind(mode: int) -> str:
    """What a non-regular file is, for messages."""
    for test, what in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return what
    return "not a regular file"


@dataclass
class _Frame:
    """A mapping or list being parsed: its field, and what comes next in it."""

    path: str
    is_map: bool
    index: int = 0  # lists: the next item's index
    key: str | None = None  # mappings: the key whose value comes next; None: a key comes next
    seen: dict[str, int] = field(default_factory=dict)  # mappings: key -> its line
    anchor: str | None = None  # its anchor, if it has one
    before: int = 0  # values in the file before it, aliases expanded


def _line_at(event: yaml.Event) -> int:
    return event.start_mark.line + 1 if event.start_mark is not None else 1


def _join(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def _field_here(parent: _Frame | None, event: yaml.NodeEvent, root: str | None) -> str | None:
    """The field of the node an event starts: "vm.cpus", "platforms[0]", a key's own name."""
    if parent is None:
        return root
    if not parent.is_map:
        return f"{parent.path}[{parent.index}]"
    if parent.key is None:  # the event is a key
        return _join(parent.path, event.value if isinstance(event, yaml.ScalarEvent) else "?")
    return _join(parent.path, parent.key)


def _done(parent: _Frame | None, event: yaml.Event) -> None:
    """A node of `parent` is complete: move on to its next key, value or item."""
    if parent is None:
        return
    if not parent.is_map:
        parent.index += 1
    elif parent.key is None:
        parent.key = event.value if isinstance(event, yaml.ScalarEvent) else "?"
    else:
        parent.key = None


class YamlDoc:
    """One YAML file composed into nodes (which keep their line), plus typed accessors.

    `YamlDoc(path)` reads a file; `YamlDoc(path, text=...)` reads text that came from elsewhere
    (a built-in recipe), `path` then only names it in messages. `default_field` is the field
    named by errors that happen outside any key (a syntax error in a known-failures list).
    Call `close()` when done (the C loader holds memory until then).
    """

    def __init__(
        self, path: Path | str, default_field: str | None = None, *, text: str | None = None
    ) -> None:
        self.path = path if isinstance(path, Path) else Path(path)
        self.name = str(path)
        self.default_field = default_field
        self.root: Node | None = None
        if text is None:
            text = self._read_text()
        self.loader = _Loader(text)
        try:
            self._check_plain(text)
            self.root = self.loader.get_single_node()
        except SpecError:
            self.close()
            raise
        except yaml.MarkedYAMLError as e:
            self.close()
            mark = e.problem_mark or e.context_mark
            what = e.problem or e.context or "invalid YAML"
            if e.context and e.problem:
                what = f"{e.problem} ({e.context})"
            line = mark.line + 1 if mark else None
            col = f" at column {mark.column + 1}" if mark else ""
            raise SpecError(
                f"YAML syntax error{col}: {what}",
                file=self.name,
                line=line,
                field=section_at(text, e.context_mark.line + 1 if e.context_mark else line)
                or default_field,
                hint="check indentation, quoting and the ':' after keys near that line",
            ) from None
        except yaml.YAMLError as e:  # ReaderError: a control character and the like
            self.close()
            pos = getattr(e, "position", None)
            line = text.count("\n", 0, pos) + 1 if isinstance(pos, int) else None
            reason = getattr(e, "reason", None) or str(e).splitlines()[0]
            raise SpecError(
                f"YAML error: {reason}",
                file=self.name,
                line=line,
                field=section_at(text, line) or default_field,
            ) from None

    def _read_text(self) -> str:
        try:
            # Never open what is not a regular file: a FIFO would stall us, a device never end.
            st = os.stat(self.path)
            if not stat.S_ISREG(st.st_mode):
                raise SpecError(
                    f"not a regular file (it is {file_kind(st.st_mode)})",
                    file=self.path,
                    hint="give the YAML file itself",
                )
            if st.st_size > MAX_YAML_BYTES:
                raise SpecError(
                    f"{st.st_size} bytes is far too big for a YAML file of vmharness (at most "
                    f"{MAX_YAML_BYTES // (1024 * 1024)} MiB)",
                    file=self.path,
                    hint="is this the file you meant?",
                )
            with open(self.path, "rb") as f:
                data = f.read(MAX_YAML_BYTES + 1)
        except OSError as e:
            raise SpecError(
                f"cannot read the file: {e.strerror or e}",
                file=self.path,
                hint="check that it exists and that you may read it",
            ) from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            raise SpecError(
                f"the file is not UTF-8 text (byte {data[e.start]:#04x} on this line)",
                file=self.path,
                line=line,
                field=section_at(data.decode("utf-8", "replace"), line) or self.default_field,
                hint="save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
            ) from None

    def _check_plain(self, text: str) -> None:
        """Refuse YAML tags and keys said twice in one mapping, anywhere in the file.

        Done on the parser's events, before composing: they carry the tags as written (a node
        no longer tells `!!str 5` from `"5"`), and they are read once, however often an alias
        repeats them.
        """
        frames: list[_Frame] = []
        anchors: dict[str, int] = {}  # anchor -> how many values it stands for
        total = 0  # values so far, aliases expanded
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.NodeEvent):
                parent = frames[-1] if frames else None
                here = _field_here(parent, event, self.default_field)
                is_alias = isinstance(event, yaml.AliasEvent)
                total += anchors.get(event.anchor or "", 1) if is_alias else 1
                if total > MAX_YAML_NODES:
                    raise SpecError(
                        f"more than {MAX_YAML_NODES} values"
                        + (" once its aliases are expanded" if anchors else ""),
                        file=self.name,
                        line=_line_at(event),
                        field=here,
                        hint="no spec, recipe or known-failures list needs this many: is it the "
                        "file you meant? Write repeated parts out instead of nesting aliases",
                    )
                if event.anchor is not None and not is_alias:
                    anchors[event.anchor] = 1  # a list or mapping: its size when it ends
                tag = getattr(event, "tag", None)
                if tag is not None:
                    raise SpecError(
                        f"YAML tag {tag!r}: vmharness reads plain YAML only",
                        file=self.name,
                        line=_line_at(event),
                        field=here,
                        hint="remove the tag; to keep a value that starts with '!' as text, "
                        "quote it",
                    )
                if parent is not None and parent.is_map and parent.key is None:
                    text_key = event.value if isinstance(event, yaml.ScalarEvent) else None
                    if text_key is not None:
                        first = parent.seen.get(text_key)
                        if first is not None:
                            raise SpecError(
                                f"duplicate key '{text_key}' (first at line {first})",
                                file=self.name,
                                line=_line_at(event),
                                field=here,
                                hint="keep one of the two: YAML would silently use the last",
                            )
                        parent.seen[text_key] = _line_at(event)
                if isinstance(event, yaml.CollectionStartEvent):
                    is_map = isinstance(event, yaml.MappingStartEvent)
                    # The keys of a file's top mapping are fields of their own ("vm"); the
                    # items of a top list are the default field's ("known_failures[0]").
                    path = (None if is_map else self.default_field) if parent is None else here
                    frames.append(
                        _Frame(
                            path=path or "", is_map=is_map, anchor=event.anchor, before=total - 1
                        )
                    )
                else:
                    _done(parent, event)
            elif isinstance(event, yaml.CollectionEndEvent):
                done = frames.pop()
                if done.anchor is not None:
                    anchors[done.anchor] = total - done.before
                _done(frames[-1] if frames else None, event)

    def close(self) -> None:
        self.loader.dispose()

    # errors -------------------------------------------------------------------------------
    def error(
        self, node: Node | None, fld: str | None, message: str, hint: str | None = None
    ) -> SpecError:
        return SpecError(message, file=self.name, line=line_of(node) or 1, field=fld, hint=hint)

    def loc(self, node: Node | None) -> Loc:
        return (self.name, line_of(node) or 1)

    # typed accessors ----------------------------------------------------------------------
    def value(self, node: Node, fld: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, fld, f"expected a single value, got {kind_of(node)}")
        try:
            return self.loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as e:
            raise self.error(
                node,
                fld,
                f"bad value {shown(node.value)}: {(str(e).splitlines() or ['?'])[0]}",
                hint="quote it to keep it as text",
            ) from None

    def string(self, node: Node, fld: str, *, allow_empty: bool = False) -> str:
        v = self.value(node, fld)
        if not isinstance(v, str):
            raise self.error(node, fld, f"expected text, got {kind_of(node)}", hint="quote it")
        if not allow_empty and not v.strip():
            raise self.error(node, fld, "must not be empty")
        return v

    def text(self, node: Node, fld: str) -> str:
        """Text, also accepting a plain number (a label written as 24)."""
        v = self.value(node, fld)
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise self.error(node, fld, f"expected text, got {kind_of(node)}", hint="quote it")
        v = str(v).strip()
        if not v:
            raise self.error(node, fld, "must not be empty")
        return v

    def integer(self, node: Node, fld: str, *, minimum: int = 1) -> int:
        v = self.value(node, fld)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(node, fld, f"expected a whole number, got {kind_of(node)}")
        if v < minimum:
            raise self.error(node, fld, f"must be at least {minimum}, got {v}")
        return v

    def boolean(self, node: Node, fld: str) -> bool:
        v = self.value(node, fld)
        if not isinstance(v, bool):
            raise self.error(node, fld, f"expected true or false, got {kind_of(node)}")
        return v

    def choice(self, node: Node, fld: str, choices: Iterable[str]) -> str:
        choices = tuple(choices)
        v = self.string(node, fld)
        if v not in choices:
            raise self.error(node, fld, f"{v!r} is not one of: {', '.join(choices)}")
        return v

    def seq(self, node: Node, fld: str) -> list[Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, fld, f"expected a list, got {kind_of(node)}")
        return list(node.value)

    def mapping(
        self,
        node: Node,
        fld: str | None,
        allowed: Iterable[str] | None,
        required: Iterable[str] = (),
        at: Node | None = None,
    ) -> dict[str, tuple[Node, Node]]:
        """Keys -> (key node, value node); unknown, duplicate and missing keys are errors.

        `at` is where a missing key is reported (the parent's key line); default the mapping.
        """
        if not isinstance(node, yaml.MappingNode):
            raise self.error(
                node, fld or "(top level)", f"expected a mapping (key: value), got {kind_of(node)}"
            )
        try:
            self.loader.flatten_mapping(node)  # YAML merge keys (<<: *anchor)
        except yaml.YAMLError as e:
            raise self.error(node, fld, f"bad merge key: {e}") from None
        allowed = tuple(allowed) if allowed is not None else None
        out: dict[str, tuple[Node, Node]] = {}
        for knode, vnode in node.value:
            key = self.value(knode, fld or "(top level)")
            if isinstance(key, bool) or not isinstance(key, str | int | float):
                raise self.error(knode, fld, f"a key must be text, got {kind_of(knode)}")
            key = str(key)
            sub = f"{fld}.{key}" if fld else key
            if key in out:
                raise self.error(
                    knode, sub, f"duplicate key (first at line {line_of(out[key][0])})"
                )
            if allowed is not None and key not in allowed:
                near = closest(key, allowed)
                hint = f"did you mean '{near}'?" if near else f"known keys: {', '.join(allowed)}"
                raise self.error(knode, sub, f"unknown key '{key}'", hint=hint)
            out[key] = (knode, vnode)
        for key in required:
            if key not in out:
                sub = f"{fld}.{key}" if fld else key
                raise self.error(
                    at or node,
                    sub,
                    f"missing required key '{key}'",
                    hint=f"add `{key}:` under `{fld}:`"
                    if fld
                    else f"add a top-level `{key}:` section (README: the spec)",
                )
        return out
