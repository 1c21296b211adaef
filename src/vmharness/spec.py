"""The spec: what a user asks for, loaded from YAML and expanded into runs.

Owns: the spec models, loading with clear errors (file, line, field), and matrix expansion.
Data flows out of here as plain frozen dataclasses (`Run`) that nothing downstream mutates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_TEST_TIMEOUT_S = 20 * 60
DEFAULT_MEMORY_MIB = 1024
DEFAULT_CPUS = 1
DEFAULT_OUTPUT_SIZE_MIB = 64
# Boot, package installation and power-off on top of the test's own timeout, for the wall clock.
DEFAULT_WALL_MARGIN_S = 10 * 60

NETWORK_MODES = ("none", "user")
RESULT_FORMATS = ("auto", "osg-test", "junit", "tap", "exit-code")


@dataclass(frozen=True)
class Platform:
    """An OS to run on: a recipe name/file that vmharness builds, or a ready image file."""

    name: str
    recipe: str | None = None  # built-in recipe name ("debian-12") or path to a recipe YAML
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
