"""The spec's data: what a user asks for, as plain frozen dataclasses, and the constants.

Bottom of the package: imports nothing of vmharness. Everything downstream (engine, backends,
reports, the run database) sees a spec only through these classes; `Run` crosses every boundary
and nothing mutates it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

# How a guest reaches the network: not at all, or through qemu's user-mode NAT.
Network = Literal["none", "user"]
# How a test's results are read from the output disk.
ResultFormat = Literal["auto", "osg-test", "junit", "tap", "exit-code"]
# Which package manager the guest's agent uses: auto (apt, dnf or yum: whichever the run's
# repositories are for and the guest has) or one of them (a Debian guest may carry dnf too).
PackageManager = Literal["auto", "apt", "dnf", "yum"]
# How a local VM starts (`vmharness run --boot`); a pool job boots ("kernel" or "disk").
Boot = Literal["snapshot", "kernel", "disk"]

NETWORK_MODES: tuple[str, ...] = get_args(Network)
RESULT_FORMATS: tuple[str, ...] = get_args(ResultFormat)
BOOT_MODES: tuple[str, ...] = get_args(Boot)
PACKAGE_MANAGERS: tuple[str, ...] = get_args(PackageManager)

DEFAULT_TEST_TIMEOUT_S = 20 * 60
DEFAULT_MEMORY_MIB = 1024
DEFAULT_CPUS = 1
DEFAULT_OUTPUT_SIZE_MIB = 64
# Boot, package installation and power-off on top of the test's own timeout, for the wall clock.
DEFAULT_WALL_MARGIN_S = 10 * 60

# Sane limits: beyond them a value is a typo, not a wish (and would stall or fill the host).
# The output disk is FAT made by `mkfs.fat` (images/disks.py): FAT16 with 512-byte clusters
# needs 4085 clusters, so mkfs.fat itself refuses below 3 MiB; the disk maker asks for 8 MiB so
# that the logs have room, and the spec refuses what the disk maker would refuse.
MIN_OUTPUT_SIZE_MIB = 8
MAX_OUTPUT_SIZE_MIB = 64 * 1024  # the guest can fill it, and it comes back to this host
MAX_CPUS = 64
MAX_MEMORY_MIB = 256 * 1024
MAX_RUNS = 100_000  # one matrix; the OSG's nightly one is 1,564
MAX_SUITE_FILES = 100_000  # files in a test suite folder (copied into every run's input disk)

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
class RpmRepo:
    """An RPM repository of a spec: the sections of the .repo file the guest gets, each its
    ("id", ID) and dnf's options as (key, value) pairs, in order. From a `baseurl` mapping
    (one section) or a .repo file (`file`, its sections as written); see spec/rpmrepos.py."""

    sections: tuple[tuple[tuple[str, str], ...], ...]
    file: str | None = None


# A repository of a spec: an apt source line, or an RPM repository.
Repository = str | RpmRepo


def repository_keys(source: Source) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The keys of `Run.repositories` a source installs from and upgrades to: the names as
    written, or for an OSG source "SERIES/NAME" (its upgrade's own series after '>')."""
    if source.series is None:
        return source.repos, source.upgrade_to
    upgrade_series = source.upgrade_series or source.series
    return (
        tuple(f"{source.series}/{n}" for n in source.repos),
        tuple(f"{upgrade_series}/{n}" for n in source.upgrade_to),
    )


@dataclass(frozen=True)
class TestSettings:
    """How the test suite is run inside the guest."""

    __test__ = False  # not a pytest test class, whatever its name

    command: str | None = None  # shell command, run in the suite folder when there is one
    suite: Path | None = None  # folder copied onto the input disk as suite/
    timeout_s: int = DEFAULT_TEST_TIMEOUT_S
    format: ResultFormat = "auto"  # how to read the results
    results: str | None = None  # path (in the output's test dir) of a JUnit/TAP file, if any
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class VMSettings:
    memory_mib: int = DEFAULT_MEMORY_MIB
    cpus: int = DEFAULT_CPUS
    network: Network = "none"
    output_size_mib: int = DEFAULT_OUTPUT_SIZE_MIB
    wall_timeout_s: int | None = None  # None: test timeout + DEFAULT_WALL_MARGIN_S
    debug: bool = False  # keep the VM up after the test instead of powering off
    package_manager: PackageManager = "auto"


@dataclass(frozen=True)
class Run:
    """One VM: one platform x one source x one package set, with the test and VM settings."""

    id: str  # stable within a run folder, e.g. "0007"
    platform: Platform
    source: Source
    package_set: PackageSet
    test: TestSettings
    vm: VMSettings
    # repo key (repository_keys) -> apt source line or RPM repository, as the run needs them
    repositories: tuple[tuple[str, Repository], ...] = ()

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
    repositories: dict[str, Repository] = field(default_factory=dict)
    # The OSG names' RPM repositories: osg_repos.toml with the spec's osg_repositories file.
    osg_repositories: dict[str, dict[str, Any]] = field(default_factory=dict)
    known_failures: list[KnownFailure] = field(default_factory=list)
    # Per-file products; empty means one product of platforms x sources x package_sets.
    matrices: list[Matrix] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # the YAML files read, in order
    # Where things were defined, for messages: "platform:NAME", "source:LABEL",
    # "package_set:LABEL", "matrix:FILE" (its platforms key), "vm.KEY" and "test.KEY" (the
    # value) -> (file, line).
    origins: dict[str, tuple[str, int]] = field(default_factory=dict, compare=False, repr=False)


def is_recipe_path(recipe: str) -> bool:
    """True when a Platform.recipe names a recipe file rather than a built-in recipe."""
    return "/" in recipe or os.sep in recipe or recipe.endswith((".yaml", ".yml"))
