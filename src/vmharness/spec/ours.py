"""Our spec dialect: one YAML file read into the accumulator (merge.Acc).

The keys a mapping may hold come from the field table (fields.py). An OSG parameter file has the
same top-level shape; where it differs (sources as strings) osg.py reads it, and `read_file`
reads both.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import yaml

from vmharness.errors import SpecError

from . import osg, rpmrepos
from .fields import (
    BY_PATH,
    ENV_NAME_PATTERN,
    MATRIX_KEYS,
    NAME_PATTERN,
    PACKAGE_SET_KEYS,
    PLATFORM_KEYS,
    PLATFORM_MAP_KEYS,
    RPM_REPOSITORY_KEYS,
    SOURCE_KEYS,
    TEST_KEYS,
    TOP_KEYS,
    VM_KEYS,
    required,
)
from .known_failures import known_failures_from_node, load_known_failures
from .merge import Acc, Decl, SourceDraft, merge_decl
from .models import (
    DEFAULT_CPUS,
    DEFAULT_MEMORY_MIB,
    DEFAULT_OUTPUT_SIZE_MIB,
    DEFAULT_TEST_TIMEOUT_S,
    MAIN_REPO,
    MAX_SUITE_FILES,
    NETWORK_MODES,
    PACKAGE_MANAGERS,
    RESULT_FORMATS,
    Network,
    PackageManager,
    PackageSet,
    Platform,
    ResultFormat,
    RpmRepo,
    Source,
    TestSettings,
    VMSettings,
    is_recipe_path,
)
from .units import format_size_mib, parse_duration, parse_size_mib
from .yamlread import Loc, Node, YamlDoc, file_kind, is_empty, kind_of, line_of, where

_NAME_RE = re.compile(NAME_PATTERN)
_ENV_RE = re.compile(ENV_NAME_PATTERN)
_APT_LINE_RE = re.compile(r"^deb(-src)?\s+\S")


def read_file(path: Path, acc: Acc) -> None:
    """Add one spec file (ours or the OSG's) to `acc`."""
    doc = YamlDoc(path)
    try:
        acc.files.append(path)
        if is_empty(doc.root):
            return  # an empty file (or all comments) adds nothing
        assert doc.root is not None
        top = doc.mapping(doc.root, None, TOP_KEYS)
        base = path.parent
        is_osg = osg.is_osg_file(doc, top)

        present = [k for k in MATRIX_KEYS if k in top]
        if present and len(present) < len(MATRIX_KEYS):
            missing = [k for k in MATRIX_KEYS if k not in top]
            raise doc.error(
                doc.root,
                missing[0],
                f"'{present[0]}' is given but '{missing[0]}' is missing: a matrix needs "
                "platforms, sources and package_sets",
            )
        if present:
            _read_matrix(doc, top, acc, is_osg=is_osg, base=base)
            if not is_osg and acc.first_plain_file is None:
                acc.first_plain_file = path

        if "repositories" in top:
            _read_repositories(doc, top["repositories"][1], acc)
        if "osg_repositories" in top:
            rel = doc.string(top["osg_repositories"][1], "osg_repositories").strip()
            table_file = Path(os.path.abspath(base / Path(rel).expanduser()))
            if not os.path.isfile(table_file):
                raise doc.error(
                    top["osg_repositories"][1],
                    "osg_repositories",
                    f"no such file: {table_file}",
                    hint="the path is relative to the spec file",
                )
            acc.osg_repositories.update(rpmrepos.load_osg_table(table_file))
        if "platform_map" in top:
            for name, (decl, loc) in read_platform_map(doc, top["platform_map"][1]).items():
                merge_decl(acc.platform_map, name, decl, loc, "platform_map")
        if "test" in top:
            test = _read_test(doc, top["test"], base, acc)
            loc = doc.loc(top["test"][0])
            if acc.test is not None and acc.test[0] != test:
                raise doc.error(
                    top["test"][0],
                    "test",
                    f"a different 'test' section is already given at {where(acc.test[1])}",
                    hint="define the test settings in one file of the folder",
                )
            acc.test = acc.test or (test, loc)
        if "vm" in top:
            vm, network_given = _read_vm(doc, top["vm"][1], acc)
            loc = doc.loc(top["vm"][0])
            if acc.vm is not None and (acc.vm[0], acc.vm[1]) != (vm, network_given):
                raise doc.error(
                    top["vm"][0],
                    "vm",
                    f"a different 'vm' section is already given at {where(acc.vm[2])}",
                    hint="define the VM settings in one file of the folder",
                )
            acc.vm = acc.vm or (vm, network_given, loc)
        if "known_failures" in top:
            _read_known_failures(doc, top["known_failures"][1], base, acc)
    finally:
        doc.close()


def _read_known_failures(doc: YamlDoc, vnode: Node, base: Path, acc: Acc) -> None:
    if isinstance(vnode, yaml.SequenceNode):
        entries = known_failures_from_node(doc, vnode)
    else:
        rel = doc.string(vnode, "known_failures")
        kf_path = Path(os.path.abspath(base / Path(rel).expanduser()))
        if not os.path.isfile(kf_path):
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


def _read_matrix(
    doc: YamlDoc, top: dict[str, tuple[Node, Node]], acc: Acc, *, is_osg: bool, base: Path
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
        decl: Decl | None
        if isinstance(item, yaml.MappingNode):
            m = doc.mapping(item, fld, PLATFORM_KEYS, required=required("platform"))
            name = _platform_name(doc, m["name"][1], f"{fld}.name")
            decl = _read_decl(doc, m, fld, base)
        else:
            name = _platform_name(doc, item, fld)
            decl = None
        if decl is not None:
            merge_decl(acc.platform_explicit, name, decl, loc, fld)
        # An OSG platform name is no recipe name here: unmapped until a platform map says.
        default: Decl | None = None if is_osg else ("recipe", name)
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
        draft = osg.read_source(doc, item, fld) if is_osg else _read_source(doc, item, fld)
        known = acc.sources.get(draft.key)
        if known is None and not draft.osg:
            same_label = acc.source_labels.get(draft.source.label)
            if same_label is not None:
                raise doc.error(
                    item,
                    f"{fld}.label",
                    f"source '{draft.source.label}' is defined differently at "
                    f"{where(same_label.loc)} and {where(draft.loc)}",
                    hint="give different sources different labels",
                )
        if known is None:
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
        pset = _read_package_set(doc, item, fld, is_osg=is_osg)
        loc = doc.loc(item)
        old_set = acc.package_sets.get(pset.label)
        if old_set is not None and old_set[0] != pset:
            what = "packages" if old_set[0].packages != pset.packages else "selinux settings"
            raise doc.error(
                item,
                f"{fld}.label",
                f"package set '{pset.label}' has different {what} at {where(old_set[1])} and "
                f"{where(loc)}",
                hint="a label names one set of packages everywhere; rename one of them",
            )
        if old_set is None:
            acc.package_sets[pset.label] = (pset, loc)
        if pset.label not in labels:
            labels.append(pset.label)

    acc.blocks.append((doc.path, names, keys, labels))
    acc.origins[f"matrix:{doc.path}"] = doc.loc(top["platforms"][0])


def _platform_name(doc: YamlDoc, node: Node, fld: str) -> str:
    name = doc.text(node, fld)
    if not _NAME_RE.match(name):
        raise doc.error(
            node,
            fld,
            f"bad platform name {name!r}",
            hint="use letters, digits and . _ + - (e.g. debian-12, rocky_9.x86_64)",
        )
    return name


def _read_decl(doc: YamlDoc, m: dict[str, tuple[Node, Node]], fld: str, base: Path) -> Decl | None:
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


def read_platform_map(doc: YamlDoc, node: Node) -> dict[str, tuple[Decl, Loc]]:
    """platform_map: {NAME: recipe-name-or-path | {recipe: X} | {image: PATH}}."""
    base = doc.path.parent
    out: dict[str, tuple[Decl, Loc]] = {}
    for name, (knode, vnode) in doc.mapping(node, "platform_map", None).items():
        fld = f"platform_map.{name}"
        if not _NAME_RE.match(name):
            raise doc.error(knode, fld, f"bad platform name {name!r}")
        decl: Decl | None
        if isinstance(vnode, yaml.MappingNode):
            decl = _read_decl(doc, doc.mapping(vnode, fld, PLATFORM_MAP_KEYS), fld, base)
            if decl is None:
                raise doc.error(vnode, fld, "give 'recipe' or 'image'")
        else:
            recipe = doc.string(vnode, fld).strip()
            if is_recipe_path(recipe):
                recipe = os.path.abspath(base / Path(recipe).expanduser())
            decl = ("recipe", recipe)
        out[name] = (decl, doc.loc(knode))
    return out


def load_platform_map(
    platform_map: Path | str | Mapping[str, Any],
) -> dict[str, tuple[Decl, Loc]]:
    """A platform map given apart from the spec (--platform-map): a YAML file or a mapping.

    The file is the mapping itself, or holds a single `platform_map:` key.
    """
    if isinstance(platform_map, Mapping):
        out: dict[str, tuple[Decl, Loc]] = {}
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
    if not os.path.isfile(path):
        raise SpecError("no such platform map file", file=path, field="platform_map")
    doc = YamlDoc(path, default_field="platform_map")
    try:
        if doc.root is None:
            return {}
        node = doc.root
        # Either the mapping itself, or a file with a single `platform_map:` key.
        if isinstance(node, yaml.MappingNode):
            keys = [k.value for k, _ in node.value]
            if keys == ["platform_map"]:
                node = node.value[0][1]
        return read_platform_map(doc, node)
    finally:
        doc.close()


def _repo_names(doc: YamlDoc, node: Node, fld: str) -> tuple[str, ...]:
    names: list[str] = []
    for j, item in enumerate(doc.seq(node, fld)):
        name = doc.text(item, f"{fld}[{j}]")
        if not _NAME_RE.match(name):
            raise doc.error(item, f"{fld}[{j}]", f"bad repository name {name!r}")
        if name not in names:
            names.append(name)
    return tuple(names)


def _read_source(doc: YamlDoc, node: Node, fld: str) -> SourceDraft:
    m = doc.mapping(node, fld, SOURCE_KEYS, required=required("source"))
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
    return SourceDraft(
        key=("label", label, repos, upgrade), source=source, loc=doc.loc(node), fld=fld, osg=False
    )


def _read_package_set(doc: YamlDoc, node: Node, fld: str, *, is_osg: bool) -> PackageSet:
    m = doc.mapping(node, fld, PACKAGE_SET_KEYS, required=required("package_set"))
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
    if is_osg and not packages:
        raise doc.error(pnode, f"{fld}.packages", "must list at least one package")
    selinux = True
    if "selinux" in m:
        selinux = doc.boolean(m["selinux"][1], f"{fld}.selinux")
    return PackageSet(label=label, packages=tuple(packages), selinux=selinux)


def _read_repositories(doc: YamlDoc, node: Node, acc: Acc) -> None:
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
        line: str | RpmRepo
        if isinstance(vnode, yaml.MappingNode):
            line = _read_rpm_mapping(doc, name, vnode, fld)
        else:
            line = doc.string(vnode, fld).strip()
            if line.endswith(".repo") and "\n" not in line:
                path = Path(os.path.abspath(doc.path.parent / Path(line).expanduser()))
                line = rpmrepos.from_repo_file(
                    path, spec_file=doc.path, line=line_of(vnode), field=fld
                )
            elif "\n" in line or not _APT_LINE_RE.match(line):
                raise doc.error(
                    vnode,
                    fld,
                    "expected one apt source line, an RPM repository {baseurl: URL} or a "
                    ".repo file",
                    hint='e.g. "deb http://deb.debian.org/debian {suite}-updates main" '
                    "({suite} becomes the platform's suite), {baseurl: "
                    '"https://repo.example.org/el$releasever/$basearch/", gpgkey: URL}, or '
                    "myrepo.repo (relative to the spec file)",
                )
        loc = doc.loc(knode)
        old = acc.repositories.get(name)
        if old is not None and old[0] != line:
            raise doc.error(
                knode,
                fld,
                f"repository '{name}' is defined differently at {where(old[1])} and {where(loc)}",
            )
        if old is None:
            acc.repositories[name] = (line, loc)


def _read_rpm_mapping(doc: YamlDoc, name: str, vnode: Node, fld: str) -> RpmRepo:
    m = doc.mapping(vnode, fld, RPM_REPOSITORY_KEYS, required=required("rpm_repository"))
    values: dict[str, Any] = {}
    for key, (_knode, node) in m.items():
        sub = f"{fld}.{key}"
        if key == "gpgcheck":
            values[key] = doc.boolean(node, sub)
        elif key == "priority":
            values[key] = doc.integer(node, sub)
        else:
            values[key] = doc.string(node, sub).strip()
    first = next(iter(m.values()))[1]
    try:
        return rpmrepos.from_mapping(name, values, file=doc.path, line=line_of(vnode), field=fld)
    except SpecError as exc:
        # The line of the key at fault, not of the mapping.
        key = (exc.field or "").rsplit(".", 1)[-1]
        node = m[key][1] if key in m else first
        raise doc.error(node, exc.field or fld, exc.detail, hint=exc.hint) from None


def _read_test(doc: YamlDoc, nodes: tuple[Node, Node], base: Path, acc: Acc) -> TestSettings:
    m = doc.mapping(nodes[1], "test", TEST_KEYS, required=required("test"), at=nodes[0])
    for key, (_knode, vnode) in m.items():
        acc.origins.setdefault(f"test.{key}", doc.loc(vnode))
    command = doc.string(m["command"][1], "test.command")
    suite: Path | None = None
    if "suite" in m:
        rel = doc.string(m["suite"][1], "test.suite").strip()
        suite = Path(os.path.abspath(base / Path(rel).expanduser()))
        if not os.path.isdir(suite):  # os.path: False, not an error, for too long a name
            raise doc.error(
                m["suite"][1],
                "test.suite",
                f"no such folder: {suite}",
                hint="the path is relative to the spec file",
            )
        _check_suite(doc, m["suite"][1], suite)
    timeout_s = DEFAULT_TEST_TIMEOUT_S
    if "timeout" in m:
        vnode = m["timeout"][1]
        timeout_s = parse_duration(
            doc.value(vnode, "test.timeout"),
            file=doc.path,
            line=line_of(vnode),
            field="test.timeout",
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
                    vnode, fld, f"expected text, got {kind_of(vnode)}", hint='quote it: "true"'
                )
            env.append((key, str(value)))
    return TestSettings(
        command=command,
        suite=suite,
        timeout_s=timeout_s,
        format=cast(ResultFormat, fmt),
        results=results,
        env=tuple(env),
    )


def _check_suite(doc: YamlDoc, node: Node, suite: Path) -> None:
    """The suite folder is copied onto every run's input disk: refuse what cannot be.

    Not the root folder (the whole machine), not more than MAX_SUITE_FILES entries, and only
    files, folders and symlinks (copied as links, never followed): a FIFO would stall the
    copy, a device or a socket cannot go onto a disk.
    """
    fld = "test.suite"
    if os.path.realpath(suite) == os.path.realpath(os.sep):
        raise doc.error(
            node,
            fld,
            f"{suite} is the root folder: the whole machine would be copied into every run",
            hint="point it at the folder of your test files (relative to the spec file)",
        )
    count = 0
    folders = [suite]
    while folders:
        folder = folders.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    count += 1
                    if count > MAX_SUITE_FILES:
                        raise doc.error(
                            node,
                            fld,
                            f"{suite} holds more than {MAX_SUITE_FILES} files and folders, all "
                            "copied into every run",
                            hint="point it at the folder of your test files alone",
                        )
                    mode = entry.stat(follow_symlinks=False).st_mode
                    if stat.S_ISDIR(mode):
                        folders.append(Path(entry.path))
                    elif not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                        rel = os.path.relpath(entry.path, suite)
                        raise doc.error(
                            node,
                            fld,
                            f"{rel} in {suite} is {file_kind(mode)}, which cannot be copied "
                            "onto the input disk",
                            hint="move it out of the suite folder: a suite holds files, folders "
                            "and symlinks",
                        )
        except OSError as e:
            raise doc.error(
                node,
                fld,
                f"cannot read {folder}: {e.strerror or e}",
                hint="the suite is copied into every run: make it readable, or point test.suite "
                "elsewhere",
            ) from None


def _within_limits(
    doc: YamlDoc, node: Node, fld: str, value: int, show: Callable[[int], str], why: str
) -> None:
    """Refuse a value beyond the field table's limits for `fld` (they are no machine's)."""
    f = BY_PATH[fld]
    if f.minimum is not None and value < f.minimum:
        raise doc.error(node, fld, f"must be at least {show(f.minimum)}, got {show(value)}", why)
    if f.maximum is not None and value > f.maximum:
        raise doc.error(node, fld, f"must be at most {show(f.maximum)}, got {show(value)}", why)


def _read_vm(doc: YamlDoc, node: Node, acc: Acc) -> tuple[VMSettings, bool]:
    m = doc.mapping(node, "vm", VM_KEYS)
    for key, (_knode, vnode) in m.items():
        acc.origins.setdefault(f"vm.{key}", doc.loc(vnode))

    def size(key: str, default: int, why: str) -> int:
        if key not in m:
            return default
        vnode, fld = m[key][1], f"vm.{key}"
        mib = parse_size_mib(doc.value(vnode, fld), file=doc.path, line=line_of(vnode), field=fld)
        why += f"; leave it out for {format_size_mib(default)}"
        _within_limits(doc, vnode, fld, mib, format_size_mib, why)
        return mib

    memory = size("memory", DEFAULT_MEMORY_MIB, "no machine gives one VM more")
    output = size(
        "output_size",
        DEFAULT_OUTPUT_SIZE_MIB,
        "the output disk is FAT (mkfs.fat) and holds every log of the run; the guest can fill "
        "it, and it comes back to this machine",
    )
    cpus = DEFAULT_CPUS
    if "cpus" in m:
        cpus = doc.integer(m["cpus"][1], "vm.cpus")
        why = f"a test VM needs a few vCPUs; leave it out for {DEFAULT_CPUS}"
        _within_limits(doc, m["cpus"][1], "vm.cpus", cpus, str, why)
    network = "none"
    if "network" in m:
        network = doc.choice(m["network"][1], "vm.network", NETWORK_MODES)
    wall: int | None = None
    if "wall_timeout" in m:
        vnode = m["wall_timeout"][1]
        wall = parse_duration(
            doc.value(vnode, "vm.wall_timeout"),
            file=doc.path,
            line=line_of(vnode),
            field="vm.wall_timeout",
        )
    debug = doc.boolean(m["debug"][1], "vm.debug") if "debug" in m else False
    manager = "auto"
    if "package_manager" in m:
        manager = doc.choice(m["package_manager"][1], "vm.package_manager", PACKAGE_MANAGERS)
    vm = VMSettings(
        memory_mib=memory,
        cpus=cpus,
        network=cast(Network, network),
        output_size_mib=output,
        wall_timeout_s=wall,
        debug=debug,
        package_manager=cast(PackageManager, manager),
    )
    return vm, "network" in m
