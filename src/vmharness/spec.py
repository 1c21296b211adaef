"""The spec: what a user asks for, loaded from YAML and expanded into runs.

Owns: the spec models, loading with clear errors (file, line, field), and matrix expansion.
Data flows out of here as plain frozen dataclasses (`Run`) that nothing downstream mutates.

Public API:

- `load_spec(path, platform_map=None) -> Spec`: a YAML file or a folder of `*.yaml` files (merged).
  Reads the vmharness format and the OSG's parameter-file format (sources written as strings).
- `check_platforms(spec, known_recipes)`: every platform must map to a recipe or an image.
- `expand(spec) -> list[Run]`: platforms x sources x package sets, ids "0001", "0002", ...
- `load_known_failures(path) -> list[KnownFailure]`: vmharness and OSG known-failure lists.
- `parse_duration(...)`, `parse_size_mib(...)`: "20m" -> 1200, "2G" -> 2048.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vmharness.errors import SpecError

DEFAULT_TEST_TIMEOUT_S = 20 * 60
DEFAULT_MEMORY_MIB = 1024
DEFAULT_CPUS = 1
DEFAULT_OUTPUT_SIZE_MIB = 64
# Boot, package installation and power-off on top of the test's own timeout, for the wall clock.
DEFAULT_WALL_MARGIN_S = 10 * 60

NETWORK_MODES = ("none", "user")
RESULT_FORMATS = ("auto", "osg-test", "junit", "tap", "exit-code")

# The repository every platform has: its own base mirror. Needs no entry in `repositories`.
MAIN_REPO = "main"


@dataclass(frozen=True)
class Platform:
    """An OS to run on: a recipe name/file that vmharness builds, or a ready image file."""

    name: str
    # Built-in recipe name ("debian-12") or the absolute path of a recipe YAML file (it then
    # contains a "/"; see `is_recipe_path`).
    recipe: str | None = None
    image: Path | None = None  # a given bootable qcow2/raw image instead of a recipe


@dataclass(frozen=True)
class Source:
    """Where packages come from: repositories to enable, optionally an upgrade to others."""

    label: str
    repos: tuple[str, ...] = ()
    upgrade_to: tuple[str, ...] = ()
    # OSG-format extras, kept for reports: "account:branch" of the test tool and the series.
    test_tool_ref: str | None = None
    series: str | None = None
    upgrade_series: str | None = None


@dataclass(frozen=True)
class PackageSet:
    label: str
    packages: tuple[str, ...] = ()
    selinux: bool = True


@dataclass(frozen=True)
class TestSettings:
    """How the test suite is run inside the guest."""

    command: str | None = None  # shell command, run in the suite folder when there is one
    suite: Path | None = None  # folder copied onto the input disk as suite/
    timeout_s: int = DEFAULT_TEST_TIMEOUT_S
    format: str = "auto"  # one of RESULT_FORMATS: how to read the results
    results: str | None = None  # path (in the output's test dir) of a JUnit/TAP file, if any
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class VMSettings:
    memory_mib: int = DEFAULT_MEMORY_MIB
    cpus: int = DEFAULT_CPUS
    network: str = "none"  # one of NETWORK_MODES
    output_size_mib: int = DEFAULT_OUTPUT_SIZE_MIB
    wall_timeout_s: int | None = None  # None: test timeout + DEFAULT_WALL_MARGIN_S
    debug: bool = False  # keep the VM up after the test instead of powering off


@dataclass(frozen=True)
class Run:
    """One VM: one platform x one source x one package set, with the test and VM settings."""

    id: str  # stable within a run folder, e.g. "0007"
    platform: Platform
    source: Source
    package_set: PackageSet
    test: TestSettings
    vm: VMSettings
    repositories: tuple[tuple[str, str], ...] = ()  # repo name -> apt source line, as needed

    @property
    def key(self) -> tuple[str, str, str]:
        """Identity across run folders (for comparisons): platform, source, package set labels."""
        return (self.platform.name, self.source.label, self.package_set.label)

    @property
    def wall_timeout_s(self) -> int:
        if self.vm.wall_timeout_s is not None:
            return self.vm.wall_timeout_s
        return self.test.timeout_s + DEFAULT_WALL_MARGIN_S


@dataclass(frozen=True)
class KnownFailure:
    """A test failure to ignore between two dates (inclusive), as the OSG's list does."""

    test: str
    module: str
    start: str  # ISO date
    end: str  # ISO date
    reason: str = ""


@dataclass(frozen=True)
class Matrix:
    """One file's part of the matrix: its platforms x sources x package sets.

    A folder of spec files is the union of each file's product (as the OSG expands its
    parameters.d), not the product of the unions.
    """

    platforms: tuple[Platform, ...]
    sources: tuple[Source, ...]
    package_sets: tuple[PackageSet, ...]
    file: Path | None = None


@dataclass
class Spec:
    path: Path
    platforms: list[Platform] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    package_sets: list[PackageSet] = field(default_factory=list)
    test: TestSettings = field(default_factory=TestSettings)
    vm: VMSettings = field(default_factory=VMSettings)
    repositories: dict[str, str] = field(default_factory=dict)
    known_failures: list[KnownFailure] = field(default_factory=list)
    # Per-file products; empty means one product of platforms x sources x package_sets.
    matrices: list[Matrix] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # the YAML files read, in order
    # Where things were defined, for messages: "platform:NAME", "source:LABEL",
    # "package_set:LABEL" -> (file, line).
    origins: dict[str, tuple[str, int]] = field(default_factory=dict, compare=False, repr=False)


# --------------------------------------------------------------------------------------------
# Small parsers shared with other modules
# --------------------------------------------------------------------------------------------

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"^(?:\s*(\d+)\s*([smhd]))+\s*$")
_DURATION_PART = re.compile(r"(\d+)\s*([smhd])")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_SIZE_FACTORS_MIB = {"k": 1 / 1024, "": 1, "m": 1, "g": 1024, "t": 1024 * 1024}


def parse_duration(
    value: str | int,
    *,
    file: str | Path | None = None,
    line: int | None = None,
    field: str | None = None,
) -> int:
    """Seconds from an int (seconds) or text: "90", "90s", "20m", "2h", "1d", "1h30m"."""
    hint = 'write seconds (90) or a number with a unit: "90s", "20m", "2h", "1h30m"'
    seconds: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str):
        text = value.strip().lower()
        if text.isdigit():
            seconds = int(text)
        elif _DURATION_RE.match(text):
            seconds = sum(int(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
    if seconds is None:
        raise SpecError(f"not a duration: {value!r}", file=file, line=line, field=field, hint=hint)
    if seconds <= 0:
        raise SpecError(
            f"a duration must be positive, got {value!r}",
            file=file,
            line=line,
            field=field,
            hint=hint,
        )
    return seconds


def parse_size_mib(
    value: str | int,
    *,
    file: str | Path | None = None,
    line: int | None = None,
    field: str | None = None,
) -> int:
    """MiB from an int (MiB) or text: "512M", "2G", "1.5G", "64MiB" (binary units)."""
    hint = 'write MiB (1024) or a size with a unit: "512M", "2G"'
    mib: float | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        mib = value
    elif isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            mib = float(m.group(1)) * _SIZE_FACTORS_MIB[m.group(2).lower()]
    if mib is None:
        raise SpecError(f"not a size: {value!r}", file=file, line=line, field=field, hint=hint)
    if mib <= 0 or mib != int(mib):
        raise SpecError(
            f"a size must be a positive whole number of MiB, got {value!r}",
            file=file,
            line=line,
            field=field,
            hint=hint,
        )
    return int(mib)


def is_recipe_path(recipe: str) -> bool:
    """True when a Platform.recipe names a recipe file rather than a built-in recipe."""
    return "/" in recipe or os.sep in recipe or recipe.endswith((".yaml", ".yml"))


# --------------------------------------------------------------------------------------------
# YAML with line numbers
# --------------------------------------------------------------------------------------------

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Node = yaml.Node


def _line(node: _Node | None) -> int | None:
    return node.start_mark.line + 1 if node is not None else None


def _kind(node: _Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == "tag:yaml.org,2002:null":
        return "nothing"
    return f"{node.value!r}"


def _close(word: str, choices: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


_TOP_KEY_RE = re.compile(r"^([A-Za-z_][\w-]*)\s*:")


def _section_at(text: str, line: int | None) -> str | None:
    """The top-level key whose section holds `line` (for a syntax error's field)."""
    if not line:
        return None
    for row in reversed(text.splitlines()[:line]):
        m = _TOP_KEY_RE.match(row)
        if m:
            return m.group(1)
    return None


class _Doc:
    """One YAML file composed into nodes (which keep their line), plus typed accessors."""

    def __init__(self, path: Path, default_field: str | None = None) -> None:
        self.path = path
        self.root: _Node | None = None
        try:
            data = path.read_bytes()
        except OSError as e:
            raise SpecError(f"cannot read the file: {e.strerror or e}", file=path) from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            raise SpecError(
                "the file is not UTF-8 text",
                file=path,
                line=line,
                field=_section_at(data.decode("utf-8", "replace"), line) or default_field,
            ) from None
        self.loader = _Loader(text)
        try:
            self.root = self.loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            what = e.problem or e.context or "invalid YAML"
            if e.context and e.problem:
                what = f"{e.problem} ({e.context})"
            line = mark.line + 1 if mark else None
            col = f" at column {mark.column + 1}" if mark else ""
            raise SpecError(
                f"YAML syntax error{col}: {what}",
                file=path,
                line=line,
                field=_section_at(text, e.context_mark.line + 1 if e.context_mark else line)
                or default_field,
                hint="check indentation, quoting and the ':' after keys near that line",
            ) from None
        except yaml.YAMLError as e:  # ReaderError: a control character and the like
            pos = getattr(e, "position", None)
            line = text.count("\n", 0, pos) + 1 if isinstance(pos, int) else None
            reason = getattr(e, "reason", None) or str(e).splitlines()[0]
            raise SpecError(
                f"YAML error: {reason}",
                file=path,
                line=line,
                field=_section_at(text, line) or default_field,
            ) from None

    def close(self) -> None:
        self.loader.dispose()

    # errors -------------------------------------------------------------------------------
    def error(
        self, node: _Node | None, fld: str | None, message: str, hint: str | None = None
    ) -> SpecError:
        return SpecError(message, file=self.path, line=_line(node) or 1, field=fld, hint=hint)

    def loc(self, node: _Node | None) -> tuple[str, int]:
        return (str(self.path), _line(node) or 1)

    # typed accessors ----------------------------------------------------------------------
    def value(self, node: _Node, fld: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, fld, f"expected a single value, got {_kind(node)}")
        try:
            return self.loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as e:
            raise self.error(node, fld, f"bad value {node.value!r}: {e}") from None

    def string(self, node: _Node, fld: str, *, allow_empty: bool = False) -> str:
        v = self.value(node, fld)
        if not isinstance(v, str):
            raise self.error(node, fld, f"expected text, got {_kind(node)}", hint="quote it")
        if not allow_empty and not v.strip():
            raise self.error(node, fld, "must not be empty")
        return v

    def text(self, node: _Node, fld: str) -> str:
        """Text, also accepting a plain number (a label written as 24)."""
        v = self.value(node, fld)
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise self.error(node, fld, f"expected text, got {_kind(node)}", hint="quote it")
        v = str(v).strip()
        if not v:
            raise self.error(node, fld, "must not be empty")
        return v

    def integer(self, node: _Node, fld: str, *, minimum: int = 1) -> int:
        v = self.value(node, fld)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(node, fld, f"expected a whole number, got {_kind(node)}")
        if v < minimum:
            raise self.error(node, fld, f"must be at least {minimum}, got {v}")
        return v

    def boolean(self, node: _Node, fld: str) -> bool:
        v = self.value(node, fld)
        if not isinstance(v, bool):
            raise self.error(node, fld, f"expected true or false, got {_kind(node)}")
        return v

    def choice(self, node: _Node, fld: str, choices: Iterable[str]) -> str:
        choices = tuple(choices)
        v = self.string(node, fld)
        if v not in choices:
            raise self.error(node, fld, f"{v!r} is not one of: {', '.join(choices)}")
        return v

    def seq(self, node: _Node, fld: str) -> list[_Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, fld, f"expected a list, got {_kind(node)}")
        return list(node.value)

    def mapping(
        self,
        node: _Node,
        fld: str | None,
        allowed: Iterable[str] | None,
        required: Iterable[str] = (),
        at: _Node | None = None,
    ) -> dict[str, tuple[_Node, _Node]]:
        """Keys -> (key node, value node); unknown, duplicate and missing keys are errors.

        `at` is where a missing key is reported (the parent's key line); default the mapping.
        """
        if not isinstance(node, yaml.MappingNode):
            raise self.error(
                node, fld or "(top level)", f"expected a mapping (key: value), got {_kind(node)}"
            )
        try:
            self.loader.flatten_mapping(node)  # YAML merge keys (<<: *anchor)
        except yaml.YAMLError as e:
            raise self.error(node, fld, f"bad merge key: {e}") from None
        allowed = tuple(allowed) if allowed is not None else None
        out: dict[str, tuple[_Node, _Node]] = {}
        for knode, vnode in node.value:
            key = self.value(knode, fld or "(top level)")
            if isinstance(key, bool) or not isinstance(key, str | int | float):
                raise self.error(knode, fld, f"a key must be text, got {_kind(knode)}")
            key = str(key)
            sub = f"{fld}.{key}" if fld else key
            if key in out:
                raise self.error(knode, sub, f"duplicate key (first at line {_line(out[key][0])})")
            if allowed is not None and key not in allowed:
                near = _close(key, allowed)
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


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

TOP_KEYS = (
    "platforms",
    "sources",
    "package_sets",
    "repositories",
    "test",
    "vm",
    "known_failures",
    "platform_map",
)
MATRIX_KEYS = ("platforms", "sources", "package_sets")
TEST_KEYS = ("command", "suite", "timeout", "format", "results", "env")
VM_KEYS = ("memory", "cpus", "network", "output_size", "wall_timeout", "debug")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_OSG_REF_RE = re.compile(r"^[\w-]+:[./\w-]+$")
_OSG_WORD_RE = re.compile(r"^[\w.+-]+$")
_OSG_SOURCE_SYNTAX = "[account:branch;] series; repo, repo [> [series/]repo, repo]"

_Loc = tuple[str, int]
# How a platform is said to run: ("recipe", name-or-abs-path) or ("image", Path).
_Decl = tuple[str, Any]


def _fmt(loc: _Loc) -> str:
    return f"{loc[0]}:{loc[1]}"


@dataclass
class _SourceDraft:
    key: tuple[Any, ...]
    source: Source  # for OSG sources the label is provisional until all files are read
    loc: _Loc
    fld: str
    osg: bool


@dataclass
class _Acc:
    """Everything read from the files, with where it came from, before merging."""

    files: list[Path] = field(default_factory=list)
    platform_default: dict[str, tuple[_Decl | None, _Loc]] = field(default_factory=dict)
    platform_explicit: dict[str, tuple[_Decl, _Loc]] = field(default_factory=dict)
    platform_map: dict[str, tuple[_Decl, _Loc]] = field(default_factory=dict)
    sources: dict[tuple[Any, ...], _SourceDraft] = field(default_factory=dict)
    source_labels: dict[str, _SourceDraft] = field(default_factory=dict)
    package_sets: dict[str, tuple[PackageSet, _Loc]] = field(default_factory=dict)
    blocks: list[tuple[Path, list[str], list[tuple[Any, ...]], list[str]]] = field(
        default_factory=list
    )
    test: tuple[TestSettings, _Loc] | None = None
    vm: tuple[VMSettings, bool, _Loc] | None = None
    repositories: dict[str, tuple[str, _Loc]] = field(default_factory=dict)
    known_failures: list[KnownFailure] = field(default_factory=list)
    first_plain_file: Path | None = None


def load_spec(
    path: Path | str,
    platform_map: Path | str | Mapping[str, Any] | None = None,
) -> Spec:
    """Load a spec file, or a folder of `*.yaml` spec files merged into one matrix.

    `platform_map` (a YAML file, or an already loaded mapping) maps platform names to a recipe
    or an image and wins over the spec's own `platform_map`. Unmapped platforms are not an error
    here; call `check_platforms` before running anything.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(
            p
            for p in path.iterdir()
            if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()
        )
        if not files:
            raise SpecError(
                "the folder holds no *.yaml spec files", file=path, field="platforms", line=None
            )
    elif path.exists():
        files = [path]
    else:
        raise SpecError("no such file or folder", file=path, hint="give a spec file or folder")

    acc = _Acc()
    for f in files:
        _read_file(f, acc)

    cli_map: dict[str, tuple[_Decl, _Loc]] = {}
    if platform_map is not None:
        cli_map = _load_platform_map(platform_map)
    return _finish(path, acc, cli_map)


def _read_file(path: Path, acc: _Acc) -> None:
    doc = _Doc(path)
    try:
        acc.files.append(path)
        if doc.root is None or (
            isinstance(doc.root, yaml.ScalarNode) and doc.root.tag == "tag:yaml.org,2002:null"
        ):
            return  # an empty file (or all comments) adds nothing
        top = doc.mapping(doc.root, None, TOP_KEYS)
        base = path.parent
        osg = _is_osg_file(doc, top)

        present = [k for k in MATRIX_KEYS if k in top]
        if present and len(present) < 3:
            missing = [k for k in MATRIX_KEYS if k not in top]
            raise doc.error(
                doc.root,
                missing[0],
                f"'{present[0]}' is given but '{missing[0]}' is missing: a matrix needs "
                "platforms, sources and package_sets",
            )
        if present:
            _read_matrix(doc, top, acc, osg=osg, base=base)
            if not osg and acc.first_plain_file is None:
                acc.first_plain_file = path

        if "repositories" in top:
            _read_repositories(doc, top["repositories"][1], acc)
        if "platform_map" in top:
            for name, (decl, loc) in _read_platform_map(doc, top["platform_map"][1]).items():
                _merge_decl(acc.platform_map, name, decl, loc, doc, "platform_map")
        if "test" in top:
            test = _read_test(doc, top["test"], base)
            loc = doc.loc(top["test"][0])
            if acc.test is not None and acc.test[0] != test:
                raise doc.error(
                    top["test"][0],
                    "test",
                    f"a different 'test' section is already given at {_fmt(acc.test[1])}",
                    hint="define the test settings in one file of the folder",
                )
            acc.test = acc.test or (test, loc)
        if "vm" in top:
            vm, network_given = _read_vm(doc, top["vm"][1])
            loc = doc.loc(top["vm"][0])
            if acc.vm is not None and (acc.vm[0], acc.vm[1]) != (vm, network_given):
                raise doc.error(
                    top["vm"][0],
                    "vm",
                    f"a different 'vm' section is already given at {_fmt(acc.vm[2])}",
                    hint="define the VM settings in one file of the folder",
                )
            acc.vm = acc.vm or (vm, network_given, loc)
        if "known_failures" in top:
            knode, vnode = top["known_failures"]
            if isinstance(vnode, yaml.SequenceNode):
                entries = _known_failures_from_node(doc, vnode)
            else:
                rel = doc.string(vnode, "known_failures")
                kf_path = Path(os.path.abspath(base / Path(rel).expanduser()))
                if not kf_path.is_file():
                    raise doc.error(
                        vnode,
                        "known_failures",
                        f"no such file: {kf_path}",
                        hint="the path is relative to the spec file",
                    )
                entries = load_known_failures(kf_path)
            for e in entries:
                if e not in acc.known_failures:
                    acc.known_failures.append(e)
    finally:
        doc.close()


def _is_osg_file(doc: _Doc, top: dict[str, tuple[_Node, _Node]]) -> bool:
    """OSG parameter files write sources as strings; vmharness files as mappings."""
    if "sources" not in top:
        return False
    items = top["sources"][1]
    if not isinstance(items, yaml.SequenceNode) or not items.value:
        return False
    first = items.value[0]
    osg = isinstance(first, yaml.ScalarNode)
    for i, item in enumerate(items.value):
        if isinstance(item, yaml.ScalarNode) != osg:
            raise doc.error(
                item,
                f"sources[{i}]",
                "sources mix the OSG string form and the vmharness mapping form",
                hint="write every source of a file the same way",
            )
    return osg


def _read_matrix(
    doc: _Doc, top: dict[str, tuple[_Node, _Node]], acc: _Acc, *, osg: bool, base: Path
) -> None:
    # Platforms ---------------------------------------------------------------------------
    pnode = top["platforms"][1]
    items = doc.seq(pnode, "platforms")
    if not items:
        raise doc.error(pnode, "platforms", "empty list: the matrix would have no runs")
    names: list[str] = []
    for i, item in enumerate(items):
        fld = f"platforms[{i}]"
        loc = doc.loc(item)
        if isinstance(item, yaml.MappingNode):
            m = doc.mapping(item, fld, ("name", "recipe", "image"), required=("name",))
            name = _platform_name(doc, m["name"][1], f"{fld}.name")
            decl = _read_decl(doc, m, fld, base)
        else:
            name = _platform_name(doc, item, fld)
            decl = None
        if decl is not None:
            _merge_decl(acc.platform_explicit, name, decl, loc, doc, fld)
        default: _Decl | None = None if osg else ("recipe", name)
        old = acc.platform_default.get(name)
        if old is None or (old[0] is None and default is not None):
            acc.platform_default[name] = (default, old[1] if old else loc)
        if name not in names:
            names.append(name)

    # Sources -----------------------------------------------------------------------------
    snode = top["sources"][1]
    items = doc.seq(snode, "sources")
    if not items:
        raise doc.error(snode, "sources", "empty list: the matrix would have no runs")
    keys: list[tuple[Any, ...]] = []
    for i, item in enumerate(items):
        fld = f"sources[{i}]"
        draft = _read_osg_source(doc, item, fld) if osg else _read_source(doc, item, fld)
        old = acc.sources.get(draft.key)
        if old is None and not draft.osg:
            same_label = acc.source_labels.get(draft.source.label)
            if same_label is not None:
                raise doc.error(
                    item,
                    f"{fld}.label",
                    f"source '{draft.source.label}' is defined differently at "
                    f"{_fmt(same_label.loc)} and {_fmt(draft.loc)}",
                    hint="give different sources different labels",
                )
        if old is None:
            acc.sources[draft.key] = draft
            if not draft.osg:
                acc.source_labels[draft.source.label] = draft
        if draft.key not in keys:
            keys.append(draft.key)

    # Package sets --------------------------------------------------------------------------
    knode = top["package_sets"][1]
    items = doc.seq(knode, "package_sets")
    if not items:
        raise doc.error(knode, "package_sets", "empty list: the matrix would have no runs")
    labels: list[str] = []
    for i, item in enumerate(items):
        fld = f"package_sets[{i}]"
        pset = _read_package_set(doc, item, fld, osg=osg)
        loc = doc.loc(item)
        old = acc.package_sets.get(pset.label)
        if old is not None and old[0] != pset:
            what = "packages" if old[0].packages != pset.packages else "selinux settings"
            raise doc.error(
                item,
                f"{fld}.label",
                f"package set '{pset.label}' has different {what} at {_fmt(old[1])} and "
                f"{_fmt(loc)}",
                hint="a label names one set of packages everywhere; rename one of them",
            )
        if old is None:
            acc.package_sets[pset.label] = (pset, loc)
        if pset.label not in labels:
            labels.append(pset.label)

    acc.blocks.append((doc.path, names, keys, labels))


def _platform_name(doc: _Doc, node: _Node, fld: str) -> str:
    name = doc.text(node, fld)
    if not _NAME_RE.match(name):
        raise doc.error(
            node,
            fld,
            f"bad platform name {name!r}",
            hint="use letters, digits and . _ + - (e.g. debian-12, rocky_9.x86_64)",
        )
    return name


def _read_decl(doc: _Doc, m: dict[str, tuple[_Node, _Node]], fld: str, base: Path) -> _Decl | None:
    """The recipe or image of a platform mapping / platform_map entry, paths made absolute."""
    if "recipe" in m and "image" in m:
        raise doc.error(m["image"][0], f"{fld}.image", "give either 'recipe' or 'image', not both")
    if "recipe" in m:
        recipe = doc.string(m["recipe"][1], f"{fld}.recipe").strip()
        if is_recipe_path(recipe):
            recipe = os.path.abspath(base / Path(recipe).expanduser())
        return ("recipe", recipe)
    if "image" in m:
        image = doc.string(m["image"][1], f"{fld}.image").strip()
        return ("image", Path(os.path.abspath(base / Path(image).expanduser())))
    return None


def _merge_decl(
    into: dict[str, tuple[_Decl, _Loc]],
    name: str,
    decl: _Decl,
    loc: _Loc,
    doc: _Doc,
    fld: str,
) -> None:
    old = into.get(name)
    if old is not None and old[0] != decl:
        raise SpecError(
            f"platform '{name}' is mapped to {_decl_text(old[0])} at {_fmt(old[1])} and to "
            f"{_decl_text(decl)} at {_fmt(loc)}",
            file=loc[0],
            line=loc[1],
            field=fld,
            hint="map each platform once",
        )
    if old is None:
        into[name] = (decl, loc)


def _decl_text(decl: _Decl) -> str:
    return f"{decl[0]} {decl[1]}"


def _read_platform_map(doc: _Doc, node: _Node) -> dict[str, tuple[_Decl, _Loc]]:
    """platform_map: {NAME: recipe-name-or-path | {recipe: X} | {image: PATH}}."""
    base = doc.path.parent
    out: dict[str, tuple[_Decl, _Loc]] = {}
    for name, (knode, vnode) in doc.mapping(node, "platform_map", None).items():
        fld = f"platform_map.{name}"
        if not _NAME_RE.match(name):
            raise doc.error(knode, fld, f"bad platform name {name!r}")
        if isinstance(vnode, yaml.MappingNode):
            decl = _read_decl(doc, doc.mapping(vnode, fld, ("recipe", "image")), fld, base)
            if decl is None:
                raise doc.error(vnode, fld, "give 'recipe' or 'image'")
        else:
            recipe = doc.string(vnode, fld).strip()
            if is_recipe_path(recipe):
                recipe = os.path.abspath(base / Path(recipe).expanduser())
            decl = ("recipe", recipe)
        out[name] = (decl, doc.loc(knode))
    return out


def _load_platform_map(platform_map: Path | str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(platform_map, Mapping):
        out: dict[str, tuple[_Decl, _Loc]] = {}
        for name, value in platform_map.items():
            loc = ("<platform map>", 1)
            if isinstance(value, Platform):
                if value.image is not None:
                    out[name] = (("image", Path(value.image)), loc)
                elif value.recipe is not None:
                    out[name] = (("recipe", value.recipe), loc)
            elif isinstance(value, Mapping) and "image" in value:
                out[name] = (("image", Path(os.path.abspath(value["image"]))), loc)
            elif isinstance(value, Mapping) and "recipe" in value:
                out[name] = (("recipe", str(value["recipe"])), loc)
            elif isinstance(value, str | Path):
                out[name] = (("recipe", str(value)), loc)
            else:
                raise SpecError(
                    f"cannot map platform '{name}' to {value!r}", field=f"platform_map.{name}"
                )
        return out
    path = Path(platform_map)
    if not path.is_file():
        raise SpecError("no such platform map file", file=path, field="platform_map")
    doc = _Doc(path, default_field="platform_map")
    try:
        if doc.root is None:
            return {}
        node = doc.root
        # Either the mapping itself, or a file with a single `platform_map:` key.
        if isinstance(node, yaml.MappingNode):
            keys = [k.value for k, _ in node.value]
            if keys == ["platform_map"]:
                node = node.value[0][1]
        return _read_platform_map(doc, node)
    finally:
        doc.close()


def _repo_names(doc: _Doc, node: _Node, fld: str) -> tuple[str, ...]:
    names: list[str] = []
    for j, item in enumerate(doc.seq(node, fld)):
        name = doc.text(item, f"{fld}[{j}]")
        if not _NAME_RE.match(name):
            raise doc.error(item, f"{fld}[{j}]", f"bad repository name {name!r}")
        if name not in names:
            names.append(name)
    return tuple(names)


def _read_source(doc: _Doc, node: _Node, fld: str) -> _SourceDraft:
    m = doc.mapping(node, fld, ("label", "repos", "upgrade_to"), required=("label",))
    label = doc.text(m["label"][1], f"{fld}.label")
    repos: tuple[str, ...] = (MAIN_REPO,)
    if "repos" in m:
        repos = _repo_names(doc, m["repos"][1], f"{fld}.repos")
        if not repos:
            raise doc.error(
                m["repos"][1],
                f"{fld}.repos",
                "needs at least one repository",
                hint=f"'{MAIN_REPO}' is the platform's own mirror",
            )
    upgrade: tuple[str, ...] = ()
    if "upgrade_to" in m:
        upgrade = _repo_names(doc, m["upgrade_to"][1], f"{fld}.upgrade_to")
    source = Source(label=label, repos=repos, upgrade_to=upgrade)
    return _SourceDraft(
        key=("label", label, repos, upgrade), source=source, loc=doc.loc(node), fld=fld, osg=False
    )


def _read_osg_source(doc: _Doc, node: _Node, fld: str) -> _SourceDraft:
    """`[account:branch;] series; repo, repo [> [upgrade_series/]repo, repo]`."""
    text = doc.string(node, fld)
    hint = f"the OSG source syntax is '{_OSG_SOURCE_SYNTAX}', e.g. '24; osg > osg-testing'"

    def bad(message: str) -> SpecError:
        return doc.error(node, fld, f"{message} in source {text!r}", hint=hint)

    parts = [p.strip() for p in text.split(";")]
    ref: str | None = None
    if len(parts) == 3:
        ref, series, repo_text = parts
        if not _OSG_REF_RE.match(ref):
            raise bad(f"bad 'account:branch' {ref!r}")
    elif len(parts) == 2:
        series, repo_text = parts
    else:
        raise bad("expected 2 or 3 parts separated by ';'")
    if not _OSG_WORD_RE.match(series):
        raise bad(f"bad series {series!r}")
    halves = repo_text.split(">")
    if len(halves) > 2:
        raise bad("more than one '>'")

    def repo_list(part: str) -> tuple[str, ...]:
        names = tuple(r.strip() for r in part.split(","))
        for r in names:
            if not r:
                raise bad("an empty repository name")
            if not _OSG_WORD_RE.match(r):
                raise bad(f"bad repository name {r!r}")
        return names

    repos = repo_list(halves[0])
    upgrade: tuple[str, ...] = ()
    upgrade_series: str | None = None
    if len(halves) == 2:
        up = halves[1].strip()
        if "/" in up:
            upgrade_series, up = (s.strip() for s in up.split("/", 1))
            if not _OSG_WORD_RE.match(upgrade_series):
                raise bad(f"bad upgrade series {upgrade_series!r}")
        upgrade = repo_list(up)
    label = f"{series}; {', '.join(repos)}"
    if upgrade:
        label += " > " + (f"{upgrade_series}/" if upgrade_series else "") + ", ".join(upgrade)
    source = Source(
        label=label,
        repos=repos,
        upgrade_to=upgrade,
        test_tool_ref=ref,
        series=series,
        upgrade_series=upgrade_series,
    )
    key = ("osg", ref, series, repos, upgrade_series, upgrade)
    return _SourceDraft(key=key, source=source, loc=doc.loc(node), fld=fld, osg=True)


def _read_package_set(doc: _Doc, node: _Node, fld: str, *, osg: bool) -> PackageSet:
    m = doc.mapping(node, fld, ("label", "packages", "selinux"), required=("label", "packages"))
    label = doc.text(m["label"][1], f"{fld}.label")
    packages: list[str] = []
    pnode = m["packages"][1]
    for j, item in enumerate(doc.seq(pnode, f"{fld}.packages")):
        name = doc.text(item, f"{fld}.packages[{j}]")
        if any(c.isspace() for c in name):
            raise doc.error(
                item,
                f"{fld}.packages[{j}]",
                f"a package name has no spaces: {name!r}",
                hint="write one package per list item",
            )
        if name not in packages:
            packages.append(name)
    if osg and not packages:
        raise doc.error(pnode, f"{fld}.packages", "must list at least one package")
    selinux = True
    if "selinux" in m:
        selinux = doc.boolean(m["selinux"][1], f"{fld}.selinux")
    return PackageSet(label=label, packages=tuple(packages), selinux=selinux)


def _read_repositories(doc: _Doc, node: _Node, acc: _Acc) -> None:
    for name, (knode, vnode) in doc.mapping(node, "repositories", None).items():
        fld = f"repositories.{name}"
        if not _NAME_RE.match(name):
            raise doc.error(knode, fld, f"bad repository name {name!r}")
        if name == MAIN_REPO:
            raise doc.error(
                knode,
                fld,
                f"'{MAIN_REPO}' is the platform's own mirror and cannot be redefined",
                hint="give this repository another name",
            )
        line = doc.string(vnode, fld).strip()
        if "\n" in line or not re.match(r"^deb(-src)?\s+\S", line):
            raise doc.error(
                vnode,
                fld,
                "expected one apt source line",
                hint='e.g. "deb http://deb.debian.org/debian {suite}-updates main"; '
                "{suite} becomes the platform's suite",
            )
        loc = doc.loc(knode)
        old = acc.repositories.get(name)
        if old is not None and old[0] != line:
            raise doc.error(
                knode,
                fld,
                f"repository '{name}' is defined differently at {_fmt(old[1])} and {_fmt(loc)}",
            )
        if old is None:
            acc.repositories[name] = (line, loc)


def _read_test(doc: _Doc, nodes: tuple[_Node, _Node], base: Path) -> TestSettings:
    m = doc.mapping(nodes[1], "test", TEST_KEYS, required=("command",), at=nodes[0])
    command = doc.string(m["command"][1], "test.command")
    suite: Path | None = None
    if "suite" in m:
        rel = doc.string(m["suite"][1], "test.suite").strip()
        suite = Path(os.path.abspath(base / Path(rel).expanduser()))
        if not suite.is_dir():
            raise doc.error(
                m["suite"][1],
                "test.suite",
                f"no such folder: {suite}",
                hint="the path is relative to the spec file",
            )
    timeout_s = DEFAULT_TEST_TIMEOUT_S
    if "timeout" in m:
        vnode = m["timeout"][1]
        timeout_s = parse_duration(
            doc.value(vnode, "test.timeout"), file=doc.path, line=_line(vnode), field="test.timeout"
        )
    fmt = "auto"
    if "format" in m:
        fmt = doc.choice(m["format"][1], "test.format", RESULT_FORMATS)
    results: str | None = None
    if "results" in m:
        results = doc.string(m["results"][1], "test.results").strip()
        rp = Path(results)
        if rp.is_absolute() or ".." in rp.parts:
            raise doc.error(
                m["results"][1],
                "test.results",
                f"must be a relative path inside the test's output folder: {results!r}",
            )
    env: list[tuple[str, str]] = []
    if "env" in m:
        for key, (knode, vnode) in doc.mapping(m["env"][1], "test.env", None).items():
            fld = f"test.env.{key}"
            if not _ENV_RE.match(key):
                raise doc.error(knode, fld, f"bad environment variable name {key!r}")
            value = doc.value(vnode, fld)
            if value is None:
                value = ""
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise doc.error(
                    vnode, fld, f"expected text, got {_kind(vnode)}", hint='quote it: "true"'
                )
            env.append((key, str(value)))
    return TestSettings(
        command=command,
        suite=suite,
        timeout_s=timeout_s,
        format=fmt,
        results=results,
        env=tuple(env),
    )


def _read_vm(doc: _Doc, node: _Node) -> tuple[VMSettings, bool]:
    m = doc.mapping(node, "vm", VM_KEYS)

    def size(key: str, default: int) -> int:
        if key not in m:
            return default
        vnode = m[key][1]
        return parse_size_mib(
            doc.value(vnode, f"vm.{key}"), file=doc.path, line=_line(vnode), field=f"vm.{key}"
        )

    memory = size("memory", DEFAULT_MEMORY_MIB)
    output = size("output_size", DEFAULT_OUTPUT_SIZE_MIB)
    cpus = doc.integer(m["cpus"][1], "vm.cpus") if "cpus" in m else DEFAULT_CPUS
    network = "none"
    if "network" in m:
        network = doc.choice(m["network"][1], "vm.network", NETWORK_MODES)
    wall: int | None = None
    if "wall_timeout" in m:
        vnode = m["wall_timeout"][1]
        wall = parse_duration(
            doc.value(vnode, "vm.wall_timeout"),
            file=doc.path,
            line=_line(vnode),
            field="vm.wall_timeout",
        )
    debug = doc.boolean(m["debug"][1], "vm.debug") if "debug" in m else False
    vm = VMSettings(
        memory_mib=memory,
        cpus=cpus,
        network=network,
        output_size_mib=output,
        wall_timeout_s=wall,
        debug=debug,
    )
    return vm, "network" in m


def _finish(path: Path, acc: _Acc, cli_map: dict[str, tuple[_Decl, _Loc]]) -> Spec:
    if not acc.blocks:
        where = acc.files[0] if len(acc.files) == 1 else path
        raise SpecError(
            "empty matrix: no file gives platforms, sources and package_sets",
            file=where,
            line=1,
            field="platforms",
            hint="a spec needs at least one platform, one source and one package set",
        )

    # Sources: final OSG labels (readable; the test tool's branch is added only where two
    # sources differ in it alone), then one label per source across all files.
    osg_by_label: dict[str, list[_SourceDraft]] = {}
    for draft in acc.sources.values():
        if draft.osg:
            osg_by_label.setdefault(draft.source.label, []).append(draft)
    for label, drafts in osg_by_label.items():
        if len(drafts) > 1:
            for d in drafts:
                ref = d.source.test_tool_ref or "packaged test tool"
                d.source = _replace_label(d.source, f"{label} ({ref})")
    by_label: dict[str, _SourceDraft] = {}
    for draft in acc.sources.values():
        other = by_label.get(draft.source.label)
        if other is not None:
            raise SpecError(
                f"source '{draft.source.label}' is defined differently at {_fmt(other.loc)} "
                f"and {_fmt(draft.loc)}",
                file=draft.loc[0],
                line=draft.loc[1],
                field=f"{draft.fld}.label" if not draft.osg else draft.fld,
                hint="give different sources different labels",
            )
        by_label[draft.source.label] = draft

    # Repositories named by vmharness sources must be defined.
    repositories = {name: line for name, (line, _loc) in acc.repositories.items()}
    for draft in acc.sources.values():
        if draft.osg:
            continue  # OSG repos are yum repository ids the image already knows
        for sub, names in (("repos", draft.source.repos), ("upgrade_to", draft.source.upgrade_to)):
            for name in names:
                if name != MAIN_REPO and name not in repositories:
                    near = _close(name, [MAIN_REPO, *repositories])
                    raise SpecError(
                        f"repository '{name}' of source '{draft.source.label}' is not defined",
                        file=draft.loc[0],
                        line=draft.loc[1],
                        field=f"{draft.fld}.{sub}",
                        hint=(f"did you mean '{near}'? " if near else "")
                        + f"define it under 'repositories:' (e.g. {name}: \"deb "
                        'http://deb.debian.org/debian {suite}-updates main"); '
                        f"'{MAIN_REPO}' is the platform's own mirror",
                    )

    # Platforms: command-line map > explicit entry > the spec's platform_map > default.
    platforms: dict[str, Platform] = {}
    origins: dict[str, tuple[str, int]] = {}
    for name, (default, loc) in acc.platform_default.items():
        decl = default
        for table in (acc.platform_map, acc.platform_explicit, cli_map):
            if name in table:
                decl = table[name][0]
        if name in acc.platform_explicit:
            loc = acc.platform_explicit[name][1]
        platforms[name] = _platform(name, decl)
        origins[f"platform:{name}"] = loc

    sources = {d.key: d.source for d in acc.sources.values()}
    for d in acc.sources.values():
        origins[f"source:{d.source.label}"] = d.loc
    for label, (_ps, loc) in acc.package_sets.items():
        origins[f"package_set:{label}"] = loc

    matrices = [
        Matrix(
            platforms=tuple(platforms[n] for n in names),
            sources=tuple(sources[k] for k in keys),
            package_sets=tuple(acc.package_sets[lb][0] for lb in labels),
            file=f,
        )
        for f, names, keys, labels in acc.blocks
    ]

    only_osg = acc.first_plain_file is None
    if acc.test is not None:
        test = acc.test[0]
    elif only_osg:
        test = TestSettings(format="osg-test")
    else:
        raise SpecError(
            "missing 'test': what to run inside the VM",
            file=acc.first_plain_file,
            line=1,
            field="test",
            hint="add e.g.\ntest:\n  command: ./run-tests\n  timeout: 20m",
        )

    if acc.vm is not None:
        vm, network_given, vm_loc = acc.vm
    else:
        vm, network_given, vm_loc = VMSettings(), False, (str(acc.files[0]), 1)
    if not network_given:
        needs = (
            any(ps.packages for ps, _ in acc.package_sets.values())
            or any(r != MAIN_REPO for s in sources.values() for r in (*s.repos, *s.upgrade_to))
            or any(s.upgrade_to for s in sources.values())
        )
        if needs:
            vm = _replace_network(vm, "user")
    if vm.wall_timeout_s is not None and vm.wall_timeout_s <= test.timeout_s:
        raise SpecError(
            f"vm.wall_timeout ({vm.wall_timeout_s} s) must be longer than test.timeout "
            f"({test.timeout_s} s): the VM would be killed before the test's own timeout",
            file=vm_loc[0],
            line=vm_loc[1],
            field="vm.wall_timeout",
            hint="leave it out to get the test timeout plus 10 minutes",
        )

    return Spec(
        path=Path(os.path.abspath(path)),
        platforms=list(platforms.values()),
        sources=list(sources.values()),
        package_sets=[ps for ps, _ in acc.package_sets.values()],
        test=test,
        vm=vm,
        repositories=repositories,
        known_failures=list(acc.known_failures),
        matrices=matrices,
        files=list(acc.files),
        origins=origins,
    )


def _replace_label(source: Source, label: str) -> Source:
    return Source(
        label=label,
        repos=source.repos,
        upgrade_to=source.upgrade_to,
        test_tool_ref=source.test_tool_ref,
        series=source.series,
        upgrade_series=source.upgrade_series,
    )


def _replace_network(vm: VMSettings, network: str) -> VMSettings:
    return VMSettings(
        memory_mib=vm.memory_mib,
        cpus=vm.cpus,
        network=network,
        output_size_mib=vm.output_size_mib,
        wall_timeout_s=vm.wall_timeout_s,
        debug=vm.debug,
    )


def _platform(name: str, decl: _Decl | None) -> Platform:
    if decl is None:
        return Platform(name=name)
    if decl[0] == "image":
        return Platform(name=name, image=decl[1])
    return Platform(name=name, recipe=decl[1])


# --------------------------------------------------------------------------------------------
# Platforms
# --------------------------------------------------------------------------------------------


def check_platforms(spec: Spec, known_recipes: set[str] | Iterable[str]) -> None:
    """Raise SpecError listing every platform that maps to no buildable recipe or image.

    A platform is fine when its image file exists, its recipe file exists, or its recipe name
    is one of `known_recipes`.
    """
    known = set(known_recipes)
    problems: list[tuple[str, str, tuple[str, int] | None]] = []
    for p in spec.platforms:
        where = spec.origins.get(f"platform:{p.name}")
        if p.image is not None:
            if not Path(p.image).is_file():
                problems.append((p.name, f"image file {p.image} does not exist", where))
        elif p.recipe is None:
            problems.append((p.name, "not mapped to a recipe or an image", where))
        elif is_recipe_path(p.recipe):
            if not Path(p.recipe).is_file():
                problems.append((p.name, f"recipe file {p.recipe} does not exist", where))
        elif p.recipe not in known:
            problems.append((p.name, f"no built-in recipe named '{p.recipe}'", where))
    if not problems:
        return
    lines = [
        f"  {name}: {why}" + (f" ({_fmt(where)})" if where else "") for name, why, where in problems
    ]
    first = problems[0][2]
    example = problems[0][0]
    recipes = ", ".join(sorted(known)) or "none"
    some = sorted(known)[0] if known else "debian-12"
    raise SpecError(
        f"{len(problems)} platform(s) map to nothing this machine can run:\n" + "\n".join(lines),
        file=first[0] if first else spec.path,
        line=first[1] if first else None,
        field="platforms",
        hint=(
            f"map each platform to a built-in recipe (known: {recipes}), a recipe file or an "
            "image file, in the spec or in a file given with --platform-map FILE:\n"
            f"  platform_map:\n    {example}: {some}\n"
            f"    other_platform: {{image: /path/to/disk.qcow2}}"
        ),
    )


# --------------------------------------------------------------------------------------------
# Expansion
# --------------------------------------------------------------------------------------------


def expand(spec: Spec) -> list[Run]:
    """All runs of a spec: per file, platforms x sources x package sets, duplicates dropped.

    The order is stable (files in name order, then platform, source, package set as written);
    ids are "0001", "0002", ... in that order.
    """
    matrices = spec.matrices or [
        Matrix(tuple(spec.platforms), tuple(spec.sources), tuple(spec.package_sets))
    ]
    repos_of: dict[str, tuple[tuple[str, str], ...]] = {}
    seen: set[tuple[str, str, str]] = set()
    runs: list[Run] = []
    test, vm = spec.test, spec.vm
    for m in matrices:
        for platform in m.platforms:
            for source in m.sources:
                repos = repos_of.get(source.label)
                if repos is None:
                    repos = repos_of[source.label] = _repositories_for(spec, source)
                for pset in m.package_sets:
                    key = (platform.name, source.label, pset.label)
                    if key in seen:
                        continue
                    seen.add(key)
                    runs.append(
                        Run(
                            id=f"{len(runs) + 1:04d}",
                            platform=platform,
                            source=source,
                            package_set=pset,
                            test=test,
                            vm=vm,
                            repositories=repos,
                        )
                    )
    return runs


def _repositories_for(spec: Spec, source: Source) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for name in (*source.repos, *source.upgrade_to):
        if name in spec.repositories and all(n != name for n, _ in out):
            out.append((name, spec.repositories[name]))
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Known failures
# --------------------------------------------------------------------------------------------

KNOWN_FAILURE_KEYS = ("test", "module", "start", "end", "reason")


def load_known_failures(path: Path | str) -> list[KnownFailure]:
    """Read a known-failures list.

    Two formats, mixable in one file:
      - {test: test_04_trace, module: test_55_condorce, start: 2026-01-01, end: 2026-12-31,
         reason: "..."}                                      (vmharness)
      - [test_04_trace, test_55_condorce, 2026-01-01, 2026-12-31]   (the OSG's own list)
    Dates are inclusive. An empty file (or only comments) is an empty list.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError("no such known-failures file", file=path, field="known_failures")
    doc = _Doc(path, default_field="known_failures")
    try:
        root = doc.root
        if root is None or (
            isinstance(root, yaml.ScalarNode) and root.tag == "tag:yaml.org,2002:null"
        ):
            return []
        if isinstance(root, yaml.MappingNode):
            m = doc.mapping(root, None, ("known_failures",), required=("known_failures",))
            root = m["known_failures"][1]
        return _known_failures_from_node(doc, root)
    finally:
        doc.close()


def _known_failures_from_node(doc: _Doc, node: _Node) -> list[KnownFailure]:
    out: list[KnownFailure] = []
    for i, item in enumerate(doc.seq(node, "known_failures")):
        fld = f"known_failures[{i}]"
        nodes: dict[str, _Node]
        if isinstance(item, yaml.SequenceNode):
            values = item.value
            if len(values) not in (4, 5):
                raise doc.error(
                    item,
                    fld,
                    f"expected [test, module, start date, end date], got {len(values)} items",
                )
            nodes = dict(zip(KNOWN_FAILURE_KEYS, values, strict=False))
        elif isinstance(item, yaml.MappingNode):
            m = doc.mapping(
                item, fld, KNOWN_FAILURE_KEYS, required=("test", "module", "start", "end")
            )
            nodes = {k: v for k, (_kn, v) in m.items()}
        else:
            raise doc.error(
                item,
                fld,
                f"expected a mapping {{test, module, start, end, reason}} or a list "
                f"[test, module, start, end], got {_kind(item)}",
            )
        test = doc.text(nodes["test"], f"{fld}.test")
        module = doc.text(nodes["module"], f"{fld}.module")
        start = _date(doc, nodes["start"], f"{fld}.start")
        end = _date(doc, nodes["end"], f"{fld}.end")
        if end < start:
            raise doc.error(
                nodes["end"], f"{fld}.end", f"end date {end} is before start date {start}"
            )
        reason = ""
        if "reason" in nodes:
            reason = doc.string(nodes["reason"], f"{fld}.reason", allow_empty=True).strip()
        out.append(
            KnownFailure(
                test=test,
                module=module,
                start=start.isoformat(),
                end=end.isoformat(),
                reason=reason,
            )
        )
    return out


def _date(doc: _Doc, node: _Node, fld: str) -> _dt.date:
    hint = "write the date as YYYY-MM-DD, e.g. 2026-12-31"
    if not isinstance(node, yaml.ScalarNode):
        raise doc.error(node, fld, f"expected a date, got {_kind(node)}", hint=hint)
    try:
        value = doc.loader.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as e:
        raise doc.error(node, fld, f"bad date {node.value!r}: {e}", hint=hint) from None
    if isinstance(value, _dt.datetime):
        raise doc.error(node, fld, f"expected a date without a time, got {node.value!r}", hint=hint)
    if isinstance(value, _dt.date):
        return value
    if isinstance(value, str):
        try:
            return _dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise doc.error(node, fld, f"bad date {node.value!r}", hint=hint)
