"""Every key of our spec dialect, once: the readers' key lists and the JSON Schema come from here.

A `Field` is one key of one mapping ("section"): the top level of a spec file (""), `test`,
`vm`, an item of `platforms`, `sources`, `package_sets` or `known_failures`, or a value of
`platform_map`. Adding a key is a row here, a field of the model (models.py) and the line of the
reader (ours.py) that turns its text into that field; the key lists below, the "unknown key"
suggestions and `vmharness schema` follow by themselves.

Types are written in a small language, which `json_schema` turns into JSON Schema:

    text | label | name | package | path | relpath | command | apt_source | repo_file | url
    date | scalar
    int | bool | duration | size | choice | env_name | known_failure_row
    @SECTION              a mapping whose keys are the fields of SECTION
    list[T]               a list of T
    map[K: T]             a mapping of free keys of type K to values of type T
    T | U                 either
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .models import (
    DEFAULT_CPUS,
    DEFAULT_MEMORY_MIB,
    DEFAULT_OUTPUT_SIZE_MIB,
    DEFAULT_TEST_TIMEOUT_S,
    MAIN_REPO,
    MAX_CPUS,
    MAX_MEMORY_MIB,
    MAX_OUTPUT_SIZE_MIB,
    MIN_OUTPUT_SIZE_MIB,
    NETWORK_MODES,
    PACKAGE_MANAGERS,
    RESULT_FORMATS,
)
from .units import DURATION_PATTERN, MAX_DURATION_S, SIZE_PATTERN

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


@dataclass(frozen=True)
class Field:
    """One key of one mapping of a spec file."""

    section: str  # "" for the top level of a file, else the mapping it is a key of
    key: str
    type: str  # in the language of the module docstring
    default: Any = None  # what an absent key means (None: nothing, or see `help`)
    help: str = ""
    required: bool = False  # the mapping must have it
    choices: tuple[str, ...] = ()  # for type "choice"
    minimum: int | None = None  # for "int" and "size" (MiB): the readers refuse beyond
    maximum: int | None = None
    matrix: bool = False  # one of the three keys that make a file's matrix

    @property
    def path(self) -> str:
        """The dotted name: "vm.cpus", "platforms", "source.repos" (a key of a source)."""
        return f"{self.section}.{self.key}" if self.section else self.key


KNOWN_FAILURE_LIST = "list[@known_failure | known_failure_row]"

FIELDS: tuple[Field, ...] = (
    # -- a spec file's top level ------------------------------------------------------------
    Field(
        "",
        "platforms",
        "list[name | @platform]",
        help="the OSes to run on: built-in recipe names (debian-12), or {name, recipe: FILE} / "
        "{name, image: FILE}",
        matrix=True,
    ),
    Field(
        "",
        "sources",
        "list[@source]",
        help="where packages come from: repositories to install from, and to upgrade to",
        matrix=True,
    ),
    Field(
        "",
        "package_sets",
        "list[@package_set]",
        help="the packages each run installs, under a label",
        matrix=True,
    ),
    Field(
        "",
        "repositories",
        "map[name: apt_source | repo_file | @rpm_repository]",
        help=f"repositories by name ('{MAIN_REPO}', the platform's own, needs none): an apt "
        "source line ({suite} becomes the platform's suite), an RPM repository {baseurl: URL} "
        "or a .repo file (relative to this one)",
    ),
    Field(
        "",
        "osg_repositories",
        "path",
        help="a TOML file (relative to this one) adding to or replacing entries of the table "
        "that maps the OSG parameter files' repository names to RPM repositories",
    ),
    Field("", "test", "@test", help="what runs inside the VM, and how its results are read"),
    Field("", "vm", "@vm", help="the VM every run gets"),
    Field(
        "",
        "known_failures",
        f"path | {KNOWN_FAILURE_LIST}",
        help="test failures to ignore between two dates: a file (relative to this one) or "
        "the list itself",
    ),
    Field(
        "",
        "platform_map",
        "map[name: text | @platform_map_entry]",
        help="platform name -> built-in recipe name, recipe file, or {image: FILE}",
    ),
    # -- an item of `platforms` -------------------------------------------------------------
    Field("platform", "name", "name", required=True, help="the platform's name in reports"),
    Field("platform", "recipe", "text", help="a built-in recipe name or a recipe YAML file"),
    Field(
        "platform",
        "image",
        "path",
        help="a bootable qcow2 or raw disk of any distribution instead of a recipe: imported "
        "(our agent put in, the file untouched) on first use, as `vmharness image import` does",
    ),
    # -- an item of `sources` ---------------------------------------------------------------
    Field("source", "label", "label", required=True, help="the source's name in reports"),
    Field(
        "source",
        "repos",
        "list[name]",
        default=[MAIN_REPO],
        help=f"repositories to install from ('{MAIN_REPO}': the platform's own mirror)",
    ),
    Field(
        "source",
        "upgrade_to",
        "list[name]",
        default=[],
        help="repositories to upgrade to after installing (tests an update)",
    ),
    # -- an item of `package_sets` ----------------------------------------------------------
    Field("package_set", "label", "label", required=True, help="the set's name in reports"),
    Field("package_set", "packages", "list[package]", required=True, help="packages to install"),
    Field("package_set", "selinux", "bool", default=True, help="SELinux enforcing (OSG)"),
    # -- a value of `repositories`: an RPM repository ---------------------------------------
    Field(
        "rpm_repository",
        "baseurl",
        "url",
        required=True,
        help="the repository's URL; dnf fills in $releasever and $basearch in the guest",
    ),
    Field(
        "rpm_repository",
        "gpgcheck",
        "bool",
        default=True,
        help="check the packages' signatures (against gpgkey, or the keys the guest has)",
    ),
    Field("rpm_repository", "gpgkey", "url", help="the URL of the key the packages are signed by"),
    Field(
        "rpm_repository",
        "priority",
        "int",
        minimum=1,
        maximum=99,
        help="dnf's priority (lower wins; the OSG's repositories have 98)",
    ),
    # -- test -------------------------------------------------------------------------------
    Field(
        "test",
        "command",
        "command",
        required=True,
        help="a shell command, run in the suite folder when there is one",
    ),
    Field(
        "test",
        "suite",
        "path",
        help="a folder (relative to the spec file) copied onto the input disk as suite/",
    ),
    Field(
        "test",
        "timeout",
        "duration",
        default=DEFAULT_TEST_TIMEOUT_S,
        help='how long the test may take: seconds or "90s", "20m", "2h"',
    ),
    Field(
        "test",
        "format",
        "choice",
        default="auto",
        choices=RESULT_FORMATS,
        help="how the results are read",
    ),
    Field(
        "test",
        "results",
        "relpath",
        help="a JUnit or TAP file the test writes, relative to $VMHARNESS_RESULTS_DIR",
    ),
    Field(
        "test",
        "env",
        "map[env_name: scalar]",
        default={},
        help="environment variables for the test command",
    ),
    # -- vm ---------------------------------------------------------------------------------
    Field(
        "vm",
        "memory",
        "size",
        default=DEFAULT_MEMORY_MIB,
        maximum=MAX_MEMORY_MIB,
        help='guest memory: MiB or "512M", "2G"',
    ),
    Field(
        "vm",
        "cpus",
        "int",
        default=DEFAULT_CPUS,
        minimum=1,
        maximum=MAX_CPUS,
        help="virtual CPUs",
    ),
    Field(
        "vm",
        "network",
        "choice",
        choices=NETWORK_MODES,
        help='none, or user (qemu user-mode NAT); default "user" when packages are installed',
    ),
    Field(
        "vm",
        "output_size",
        "size",
        default=DEFAULT_OUTPUT_SIZE_MIB,
        minimum=MIN_OUTPUT_SIZE_MIB,
        maximum=MAX_OUTPUT_SIZE_MIB,
        help='the output disk the guest writes its logs to: MiB or "64M"',
    ),
    Field(
        "vm",
        "wall_timeout",
        "duration",
        help="when the VM is killed, whatever it does; default: test timeout + 10m",
    ),
    Field(
        "vm",
        "debug",
        "bool",
        default=False,
        help="keep the VM up after the test (root logs in on the console)",
    ),
    Field(
        "vm",
        "package_manager",
        "choice",
        default="auto",
        choices=PACKAGE_MANAGERS,
        help="the guest's package manager: auto (what the repositories are for and the guest "
        "has: apt, else dnf, else yum) or one of them (a Debian guest may have dnf too)",
    ),
    # -- an item of `known_failures` --------------------------------------------------------
    Field("known_failure", "test", "label", required=True, help="the test function"),
    Field("known_failure", "module", "label", required=True, help="the test module"),
    Field("known_failure", "start", "date", required=True, help="first day (YYYY-MM-DD)"),
    Field("known_failure", "end", "date", required=True, help="last day (YYYY-MM-DD)"),
    Field("known_failure", "reason", "text", default="", help="why it is ignored"),
    # -- a value of `platform_map` ----------------------------------------------------------
    Field("platform_map_entry", "recipe", "text", help="a built-in recipe name or recipe file"),
    Field(
        "platform_map_entry",
        "image",
        "path",
        help="a bootable qcow2 or raw disk of any distribution, imported on first use",
    ),
)

SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(f.section for f in FIELDS))
BY_PATH: dict[str, Field] = {f.path: f for f in FIELDS}


def keys(section: str) -> tuple[str, ...]:
    """The keys a section's mapping may hold, in the table's order."""
    return tuple(f.key for f in FIELDS if f.section == section)


def required(section: str) -> tuple[str, ...]:
    """The keys a section's mapping must hold."""
    return tuple(f.key for f in FIELDS if f.section == section and f.required)


TOP_KEYS = keys("")
MATRIX_KEYS = tuple(f.key for f in FIELDS if f.matrix)
TEST_KEYS = keys("test")
VM_KEYS = keys("vm")
PLATFORM_KEYS = keys("platform")
SOURCE_KEYS = keys("source")
PACKAGE_SET_KEYS = keys("package_set")
KNOWN_FAILURE_KEYS = keys("known_failure")
PLATFORM_MAP_KEYS = keys("platform_map_entry")
RPM_REPOSITORY_KEYS = keys("rpm_repository")


# -- JSON Schema ---------------------------------------------------------------------------

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_NOT_BLANK = r"\S"
_LABEL = {"anyOf": [{"type": "string", "pattern": _NOT_BLANK}, {"type": "number"}]}
_SCALARS: dict[str, dict[str, Any]] = {
    "text": {"type": "string", "pattern": _NOT_BLANK},
    "command": {"type": "string", "pattern": _NOT_BLANK},
    "path": {"type": "string", "pattern": _NOT_BLANK},
    "relpath": {
        "type": "string",
        "pattern": _NOT_BLANK,
        "not": {"pattern": r"^\s*/|(^|/)\.\.(/|$)"},
    },
    "label": _LABEL,
    "name": {
        "anyOf": [
            {"type": "string", "pattern": NAME_PATTERN},
            {"type": "integer", "minimum": 0},
        ]
    },
    "package": {
        "anyOf": [{"type": "string", "pattern": r"^\s*\S+\s*$"}, {"type": "number"}],
    },
    "apt_source": {"type": "string", "pattern": r"^\s*deb(-src)?\s+\S[^\n]*$"},
    "repo_file": {"type": "string", "pattern": r"^[^\n]*\.repo\s*$"},
    "url": {"type": "string", "pattern": r"^\s*(https?|ftp|file)://\S+\s*$"},
    "date": {"type": "string", "format": "date", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
    "scalar": {"type": ["string", "number", "null"]},
    "bool": {"type": "boolean"},
    "duration": {
        "anyOf": [
            {"type": "integer", "minimum": 1, "maximum": MAX_DURATION_S},
            {"type": "string", "pattern": DURATION_PATTERN},
        ]
    },
    "size": {
        "anyOf": [
            {"type": "integer", "minimum": 1},
            {"type": "string", "pattern": SIZE_PATTERN},
        ]
    },
    "env_name": {"type": "string", "pattern": ENV_NAME_PATTERN},
    "known_failure_row": {
        "type": "array",
        "prefixItems": [_LABEL, _LABEL, {"$ref": "#/$defs/date"}, {"$ref": "#/$defs/date"}],
        "items": {"type": "string"},
        "minItems": 4,
        "maxItems": 5,
    },
}


def _split_top(text: str, sep: str) -> list[str]:
    """`text` split at `sep` outside brackets."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
        elif c == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _type_schema(type_: str, f: Field | None = None) -> dict[str, Any]:
    alternatives = _split_top(type_, "|")
    if len(alternatives) > 1:
        return {"anyOf": [_type_schema(a, f) for a in alternatives]}
    t = alternatives[0]
    if t.startswith("@"):
        return {"$ref": f"#/$defs/{t[1:]}"}
    if t.startswith("list[") and t.endswith("]"):
        return {"type": "array", "items": _type_schema(t[5:-1])}
    if t.startswith("map[") and t.endswith("]"):
        key, value = _split_top(t[4:-1], ":")
        return {
            "type": "object",
            "propertyNames": _type_schema(key),
            "additionalProperties": _type_schema(value),
        }
    if t == "int" or (t == "size" and f is not None and (f.minimum or f.maximum)):
        out: dict[str, Any] = {"type": "integer", "minimum": 1}
        if f is not None and f.minimum is not None:
            out["minimum"] = f.minimum
        if f is not None and f.maximum is not None:
            out["maximum"] = f.maximum
        if t == "size":  # the limits hold for a number of MiB; "2G" is checked when loaded
            return {"anyOf": [out, {"type": "string", "pattern": SIZE_PATTERN}]}
        return out
    if t == "choice":
        return {"enum": list(f.choices) if f is not None else []}
    if t in _SCALARS:
        return {"$ref": f"#/$defs/{t}"}
    raise ValueError(f"unknown field type {t!r}")  # a mistake in the table, not in a spec


def _section_schema(section: str) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for f in FIELDS:
        if f.section != section:
            continue
        prop = dict(_type_schema(f.type, f))
        if f.help:
            prop["description"] = f.help
        if f.default is not None:
            prop["default"] = f.default
        props[f.key] = prop
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required(section):
        out["required"] = list(required(section))
    return out


def json_schema() -> dict[str, Any]:
    """A JSON Schema (2020-12) of our spec dialect, for editors that validate YAML as typed.

    It checks shapes, names and formats; what needs the file system or the whole folder
    (paths exist, labels agree across files, a folder's one `test`) only `vmharness matrix`
    checks. The OSG's parameter files (sources written as strings) are another dialect and
    do not validate against it.
    """
    defs: dict[str, Any] = {name: dict(schema) for name, schema in _SCALARS.items()}
    for section in SECTIONS:
        if section:
            defs[section] = _section_schema(section)
    defs["known_failure_list"] = _type_schema(KNOWN_FAILURE_LIST)
    top = _section_schema("")
    matrix = list(MATRIX_KEYS)
    return {
        "$schema": SCHEMA_DIALECT,
        "title": "vmharness spec",
        "description": "One file of a vmharness spec (a folder of them merges into one "
        "matrix). A file that gives one of platforms, sources and package_sets gives all three.",
        **top,
        "dependentRequired": {k: [m for m in matrix if m != k] for k in matrix},
        "$defs": defs,
    }


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2) + "\n"
