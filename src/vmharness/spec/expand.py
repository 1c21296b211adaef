"""From a Spec to its runs: matrix expansion (duplicates dropped) and the checks made before
anything runs (every platform maps to something this machine can run; a VM fits on it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from vmharness.errors import SpecError

from .models import (
    MAX_RUNS,
    Matrix,
    Repository,
    RpmRepo,
    Run,
    Source,
    Spec,
    is_recipe_path,
    repository_keys,
)
from .rpmrepos import osg_repo
from .units import format_size_mib
from .yamlread import where


def check_platforms(spec: Spec, known_recipes: set[str] | Iterable[str]) -> None:
    """Raise SpecError listing every platform that maps to no buildable recipe or image.

    A platform is fine when its image file exists, its recipe file exists, or its recipe name
    is one of `known_recipes`.
    """
    known = set(known_recipes)
    problems: list[tuple[str, str, tuple[str, int] | None]] = []
    for p in spec.platforms:
        loc = spec.origins.get(f"platform:{p.name}")
        if p.image is not None:
            if not os.path.isfile(p.image):
                problems.append((p.name, f"image file {p.image} does not exist", loc))
        elif p.recipe is None:
            problems.append((p.name, "not mapped to a recipe or an image", loc))
        elif is_recipe_path(p.recipe):
            if not os.path.isfile(p.recipe):
                problems.append((p.name, f"recipe file {p.recipe} does not exist", loc))
        elif p.recipe not in known:
            problems.append((p.name, f"no built-in recipe named '{p.recipe}'", loc))
    if not problems:
        return
    lines = [
        f"  {name}: {why}" + (f" ({where(loc)})" if loc else "") for name, why, loc in problems
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


def total_memory_mib() -> int:
    """This machine's RAM in MiB (0 when it cannot be told)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (OSError, ValueError, AttributeError):
        return 0


def check_host(spec: Spec, *, cpus: int | None = None, memory_mib: int | None = None) -> None:
    """Raise SpecError when one VM of the spec needs more than this machine has.

    More vCPUs than it has CPUs, or more guest memory than its RAM: qemu would start and crawl,
    or be killed, and every run would die. For runs here; a pool's machines are not this one.
    `cpus` and `memory_mib` default to this machine's.
    """
    cpus = cpus or os.cpu_count() or 1
    memory_mib = memory_mib or total_memory_mib()

    def at(key: str) -> tuple[str | Path, int | None]:
        loc = spec.origins.get(key)
        return (loc[0], loc[1]) if loc else (spec.path, None)

    if spec.vm.cpus > cpus:
        file, line = at("vm.cpus")
        raise SpecError(
            f"{spec.vm.cpus} vCPUs for one VM, but this machine has {cpus} CPUs",
            file=file,
            line=line,
            field="vm.cpus",
            hint=f"ask for at most {cpus}, or run on a pool (vmharness submit)",
        )
    if memory_mib and spec.vm.memory_mib > memory_mib:
        file, line = at("vm.memory")
        raise SpecError(
            f"{format_size_mib(spec.vm.memory_mib)} of memory for one VM, but this machine has "
            f"{format_size_mib(memory_mib)} in all",
            file=file,
            line=line,
            field="vm.memory",
            hint="ask for less (most test VMs need 512M to 2G), or run on a pool "
            "(vmharness submit)",
        )


def expand(spec: Spec) -> list[Run]:
    """All runs of a spec: per file, platforms x sources x package sets, duplicates dropped.

    The order is stable (files in name order, then platform, source, package set as written);
    ids are "0001", "0002", ... in that order. More than MAX_RUNS runs is a SpecError, found
    before they are made.
    """
    matrices = spec.matrices or [
        Matrix(tuple(spec.platforms), tuple(spec.sources), tuple(spec.package_sets))
    ]
    hint = (
        "split it into specs run one after the other, or list fewer platforms, sources or "
        "package sets"
    )
    for m in matrices:
        product = len(m.platforms) * len(m.sources) * len(m.package_sets)
        if product > MAX_RUNS:
            loc = spec.origins.get(f"matrix:{m.file}")
            raise SpecError(
                f"{len(m.platforms)} platforms x {len(m.sources)} sources x "
                f"{len(m.package_sets)} package sets make {product} runs; a matrix may have "
                f"{MAX_RUNS} at most",
                file=loc[0] if loc else (m.file or spec.path),
                line=loc[1] if loc else None,
                field="platforms",
                hint=hint,
            )
    repos_of: dict[str, tuple[tuple[str, Repository], ...]] = {}
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
                    if len(runs) == MAX_RUNS:
                        raise SpecError(
                            f"the files of this spec make more than {MAX_RUNS} runs together, "
                            "the most a matrix may have",
                            file=spec.path,
                            field="platforms",
                            hint=hint,
                        )
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


def _repositories_for(spec: Spec, source: Source) -> tuple[tuple[str, Repository], ...]:
    """What a source's repository keys (models.repository_keys) stand for: the spec's own
    repositories, or for an OSG source the OSG table's (names it has not are the image's)."""
    out: list[tuple[str, Repository]] = []
    install, upgrade = repository_keys(source)
    for key in (*install, *upgrade):
        if any(k == key for k, _ in out):
            continue
        if source.series is None:
            if key in spec.repositories:
                out.append((key, spec.repositories[key]))
            continue
        series, name = key.split("/", 1)
        repo = osg_repo(spec.osg_repositories, series, name)
        if repo is not None:
            if any(k.split("/", 1)[1] == name for k, _ in out):  # one name, two series
                repo = RpmRepo(
                    sections=tuple(
                        tuple((k, f"{v}-{series}" if k == "id" else v) for k, v in section)
                        for section in repo.sections
                    )
                )
            out.append((key, repo))
    return tuple(out)
