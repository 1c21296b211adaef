"""The spec: what a user asks for, loaded from YAML and expanded into runs.

Owns: the spec models, loading with clear errors (file, line, field), and matrix expansion.
Data flows out of here as plain frozen dataclasses (`Run`) that nothing downstream mutates.

Public API:

- `load_spec(path, platform_map=None) -> Spec`: a YAML file or a folder of `*.yaml` files (merged).
  Reads the vmharness format and the OSG's parameter-file format (sources written as strings).
- `check_platforms(spec, known_recipes)`: every platform must map to a recipe or an image.
- `check_host(spec)`: one VM must fit on this machine (its CPUs, its RAM), for runs here.
- `expand(spec) -> list[Run]`: platforms x sources x package sets, ids "0001", "0002", ...
- `load_known_failures(path) -> list[KnownFailure]`: vmharness and OSG known-failure lists.
- `parse_duration(...)`, `parse_size_mib(...)`: "20m" -> 1200, "2G" -> 2048.
- `json_schema()`, `json_schema_text()`: a JSON Schema of our spec dialect (`vmharness schema`).

Modules, bottom up (imports run one way, upwards in this list never):

    models     the dataclasses and constants
    units      durations and sizes
    yamlread   YAML with lines: the one reader of users' YAML (specs, recipes, known failures)
    fields     the declarative table of spec keys; key lists and the JSON Schema
    known_failures
    merge      the accumulator both dialects read into, and the merge of a folder
    rpmrepos   RPM repositories: baseurl mappings, .repo files, the OSG name table
    osg        the OSG's parameter-file dialect
    ours       our dialect (and the file-level reading both dialects share)
    load       load_spec
    expand     matrix expansion and the checks before running
"""

from __future__ import annotations

from .expand import check_host, check_platforms, expand
from .fields import (
    KNOWN_FAILURE_KEYS,
    MATRIX_KEYS,
    TEST_KEYS,
    TOP_KEYS,
    VM_KEYS,
    json_schema,
    json_schema_text,
)
from .known_failures import load_known_failures
from .load import load_spec
from .models import (
    BOOT_MODES,
    DEFAULT_CPUS,
    DEFAULT_MEMORY_MIB,
    DEFAULT_OUTPUT_SIZE_MIB,
    DEFAULT_TEST_TIMEOUT_S,
    DEFAULT_WALL_MARGIN_S,
    MAIN_REPO,
    NETWORK_MODES,
    PACKAGE_MANAGERS,
    RESULT_FORMATS,
    Boot,
    KnownFailure,
    Matrix,
    Network,
    PackageSet,
    Platform,
    Repository,
    ResultFormat,
    RpmRepo,
    Run,
    Source,
    Spec,
    TestSettings,
    VMSettings,
    is_recipe_path,
    repository_keys,
)
from .units import parse_duration, parse_size_mib

__all__ = [
    "BOOT_MODES",
    "DEFAULT_CPUS",
    "DEFAULT_MEMORY_MIB",
    "DEFAULT_OUTPUT_SIZE_MIB",
    "DEFAULT_TEST_TIMEOUT_S",
    "DEFAULT_WALL_MARGIN_S",
    "KNOWN_FAILURE_KEYS",
    "MAIN_REPO",
    "MATRIX_KEYS",
    "NETWORK_MODES",
    "PACKAGE_MANAGERS",
    "RESULT_FORMATS",
    "TEST_KEYS",
    "TOP_KEYS",
    "VM_KEYS",
    "Boot",
    "KnownFailure",
    "Matrix",
    "Network",
    "PackageSet",
    "Platform",
    "Repository",
    "ResultFormat",
    "RpmRepo",
    "Run",
    "Source",
    "Spec",
    "TestSettings",
    "VMSettings",
    "check_host",
    "check_platforms",
    "expand",
    "is_recipe_path",
    "json_schema",
    "json_schema_text",
    "load_known_failures",
    "load_spec",
    "parse_duration",
    "parse_size_mib",
    "repository_keys",
]
