"""The accumulator both dialects read into, and the merge of a folder's files into one `Spec`.

Each file of a spec folder adds to one `Acc`: its matrix block (platforms x sources x package
sets), its settings, with where each thing was written. `merge` then checks what only the whole
folder can tell (one label, one meaning; repositories defined; one `test`) and builds the Spec.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vmharness.errors import SpecError

from .models import (
    MAIN_REPO,
    KnownFailure,
    Matrix,
    Network,
    PackageSet,
    Platform,
    Repository,
    RpmRepo,
    Source,
    Spec,
    TestSettings,
    VMSettings,
)
from .rpmrepos import load_osg_table
from .yamlread import Loc, closest, where

# How a platform is said to run: ("recipe", name-or-abs-path) or ("image", Path).
Decl = tuple[str, Any]


@dataclass
class SourceDraft:
    key: tuple[Any, ...]
    source: Source  # for OSG sources the label is provisional until all files are read
    loc: Loc
    fld: str
    osg: bool


@dataclass
class Acc:
    """Everything read from the files, with where it came from, before merging."""

    files: list[Path] = field(default_factory=list)
    platform_default: dict[str, tuple[Decl | None, Loc]] = field(default_factory=dict)
    platform_explicit: dict[str, tuple[Decl, Loc]] = field(default_factory=dict)
    platform_map: dict[str, tuple[Decl, Loc]] = field(default_factory=dict)
    sources: dict[tuple[Any, ...], SourceDraft] = field(default_factory=dict)
    source_labels: dict[str, SourceDraft] = field(default_factory=dict)
    package_sets: dict[str, tuple[PackageSet, Loc]] = field(default_factory=dict)
    # Per file with a matrix: (file, platform names, source keys, package set labels).
    blocks: list[tuple[Path, list[str], list[tuple[Any, ...]], list[str]]] = field(
        default_factory=list
    )
    test: tuple[TestSettings, Loc] | None = None
    vm: tuple[VMSettings, bool, Loc] | None = None
    repositories: dict[str, tuple[Repository, Loc]] = field(default_factory=dict)
    # Entries of the spec's osg_repositories files, over the built-in table's.
    osg_repositories: dict[str, dict[str, Any]] = field(default_factory=dict)
    known_failures: list[KnownFailure] = field(default_factory=list)
    first_plain_file: Path | None = None
    # Where values were written, for checks made after loading ("vm.cpus" -> (file, line)).
    origins: dict[str, Loc] = field(default_factory=dict)


def merge_decl(
    into: dict[str, tuple[Decl, Loc]], name: str, decl: Decl, loc: Loc, fld: str
) -> None:
    """Record how platform `name` runs; the same platform mapped two ways is an error."""
    old = into.get(name)
    if old is not None and old[0] != decl:
        raise SpecError(
            f"platform '{name}' is mapped to {_decl_text(old[0])} at {where(old[1])} and to "
            f"{_decl_text(decl)} at {where(loc)}",
            file=loc[0],
            line=loc[1],
            field=fld,
            hint="map each platform once",
        )
    if old is None:
        into[name] = (decl, loc)


def _decl_text(decl: Decl) -> str:
    return f"{decl[0]} {decl[1]}"


def merge(path: Path, acc: Acc, cli_map: dict[str, tuple[Decl, Loc]]) -> Spec:
    """The Spec of everything read into `acc`; `cli_map` (--platform-map) wins over the files.

    OSG source labels must be settled first (osg.settle_labels).
    """
    if not acc.blocks:
        where_ = acc.files[0] if len(acc.files) == 1 else path
        raise SpecError(
            "empty matrix: no file gives platforms, sources and package_sets",
            file=where_,
            line=1,
            field="platforms",
            hint="a spec needs at least one platform, one source and one package set",
        )

    # One label per source across all files.
    by_label: dict[str, SourceDraft] = {}
    for draft in acc.sources.values():
        other = by_label.get(draft.source.label)
        if other is not None:
            raise SpecError(
                f"source '{draft.source.label}' is defined differently at {where(other.loc)} "
                f"and {where(draft.loc)}",
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
                    near = closest(name, [MAIN_REPO, *repositories])
                    raise SpecError(
                        f"repository '{name}' of source '{draft.source.label}' is not defined",
                        file=draft.loc[0],
                        line=draft.loc[1],
                        field=f"{draft.fld}.{sub}",
                        hint=(f"did you mean '{near}'? " if near else "")
                        + f"define it under 'repositories:' (e.g. {name}: \"deb "
                        'http://deb.debian.org/debian {suite}-updates main", or '
                        f"{name}: {{baseurl: URL}} for an RPM repository); "
                        f"'{MAIN_REPO}' is the platform's own mirror",
                    )
        kinds = {
            isinstance(repositories[n], RpmRepo)
            for n in (*draft.source.repos, *draft.source.upgrade_to)
            if n in repositories
        }
        if len(kinds) > 1:
            raise SpecError(
                f"source '{draft.source.label}' mixes apt and RPM repositories",
                file=draft.loc[0],
                line=draft.loc[1],
                field=f"{draft.fld}.repos",
                hint="one guest installs with one package manager: give apt and RPM "
                "repositories to different sources",
            )

    # Platforms: command-line map > explicit entry > the spec's platform_map > default.
    platforms: dict[str, Platform] = {}
    origins: dict[str, Loc] = dict(acc.origins)
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
            user: Network = "user"
            vm = replace(vm, network=user)
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
        osg_repositories={**load_osg_table(), **acc.osg_repositories},
        known_failures=list(acc.known_failures),
        matrices=matrices,
        files=list(acc.files),
        origins=origins,
    )


def _platform(name: str, decl: Decl | None) -> Platform:
    if decl is None:
        return Platform(name=name)
    if decl[0] == "image":
        return Platform(name=name, image=decl[1])
    return Platform(name=name, recipe=decl[1])
