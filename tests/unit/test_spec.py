"""Spec loading, matrix expansion and known failures (unit tests, no VM)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from vmharness.errors import EXIT_USAGE, SpecError
from vmharness.spec import (
    KnownFailure,
    PackageSet,
    Platform,
    Source,
    Spec,
    check_platforms,
    expand,
    load_known_failures,
    load_spec,
    parse_duration,
    parse_size_mib,
)

REPO = Path(__file__).resolve().parents[2]
PEER = REPO.parent / "shared" / "peer-data"
OSG_PARAMS = PEER / "vm-test-runs" / "parameters.d"
OSG_EXCEPTIONS = PEER / "vm-test-runs" / "test-exceptions.yaml"

MINIMAL = """\
platforms: [debian-12, debian-13]
sources:
  - label: stable
    repos: [main]
  - label: stable -> updates
    repos: [main]
    upgrade_to: [main, updates]
package_sets:
  - label: Web server
    packages: [nginx-light, curl]
  - label: SSH server
    packages: [openssh-server]
repositories:
  updates: "deb http://deb.debian.org/debian {suite}-updates main"
test:
  command: ./run-tests
  timeout: 20m
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def spec_error(path: Path, **kwargs) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_spec(path, **kwargs)
    return info.value


def assert_names(err: SpecError, path: Path, line: int, field: str) -> None:
    """The message (what the user sees) names file, line and field; so do the attributes."""
    text = str(err)
    assert f"{path}:{line}" in text, text
    assert f"field '{field}'" in text, text
    assert (err.file, err.line, err.field) == (str(path), line, field)
    assert err.exit_code == EXIT_USAGE


# ------------------------------------------------------------------------------------------
# The vmharness format
# ------------------------------------------------------------------------------------------


def test_minimal_spec_expands_in_order(tmp_path):
    spec = load_spec(write(tmp_path, "spec.yaml", MINIMAL))
    runs = expand(spec)
    assert [r.id for r in runs] == [f"{i:04d}" for i in range(1, 9)]
    assert [r.key for r in runs][:3] == [
        ("debian-12", "stable", "Web server"),
        ("debian-12", "stable", "SSH server"),
        ("debian-12", "stable -> updates", "Web server"),
    ]
    assert runs[-1].key == ("debian-13", "stable -> updates", "SSH server")
    assert runs[0].platform == Platform("debian-12", recipe="debian-12")
    assert runs[0].package_set == PackageSet("Web server", ("nginx-light", "curl"))
    assert runs[2].source == Source("stable -> updates", ("main",), ("main", "updates"))
    assert runs[0].test.command == "./run-tests"
    assert runs[0].test.timeout_s == 1200
    assert runs[0].wall_timeout_s == 1200 + 600


def test_run_repositories_hold_only_what_the_run_needs(tmp_path):
    runs = expand(load_spec(write(tmp_path, "spec.yaml", MINIMAL)))
    by_source = {r.source.label: r.repositories for r in runs}
    assert by_source["stable"] == ()
    # {suite} stays as text: the platform's suite replaces it at run time.
    assert by_source["stable -> updates"] == (
        ("updates", "deb http://deb.debian.org/debian {suite}-updates main"),
    )


def test_network_defaults_to_user_when_installing_else_none(tmp_path):
    spec = load_spec(write(tmp_path, "a.yaml", MINIMAL))
    assert spec.vm.network == "user"
    bare = """\
    platforms: [debian-12]
    sources: [{label: base}]
    package_sets: [{label: nothing, packages: []}]
    test: {command: "true"}
    """
    spec = load_spec(write(tmp_path, "b.yaml", bare))
    assert spec.vm.network == "none"
    assert spec.sources[0].repos == ("main",)
    explicit = bare + "vm: {network: none}\n"
    assert load_spec(write(tmp_path, "c.yaml", explicit)).vm.network == "none"
    installing = MINIMAL + "vm: {network: none}\n"
    assert load_spec(write(tmp_path, "d.yaml", installing)).vm.network == "none"


def test_all_settings_and_relative_paths(tmp_path):
    (tmp_path / "sub" / "suite-dir").mkdir(parents=True)
    write(tmp_path, "sub/kf.yaml", "- [t1, m1, 2026-01-01, 2026-01-31]\n")
    path = write(
        tmp_path,
        "sub/spec.yaml",
        """\
        platforms:
          - debian-12
          - {name: custom, recipe: recipes/custom.yaml}
          - {name: given, image: ../images/given.qcow2}
        sources: [{label: stable, repos: [main]}]
        package_sets: [{label: Web, packages: [curl], selinux: false}]
        test:
          command: ./run-tests
          suite: suite-dir/
          timeout: 90s
          format: junit
          results: out/results.xml
          env: {KEY: value, NUM: 3}
        vm:
          memory: 2G
          cpus: 2
          network: user
          output_size: 128M
          wall_timeout: 1h
          debug: true
        known_failures: kf.yaml
        """,
    )
    spec = load_spec(path)
    base = tmp_path / "sub"
    assert spec.platforms[1] == Platform("custom", recipe=str(base / "recipes" / "custom.yaml"))
    assert spec.platforms[2] == Platform("given", image=tmp_path / "images" / "given.qcow2")
    assert spec.test.suite == base / "suite-dir"
    assert spec.test.timeout_s == 90
    assert spec.test.format == "junit"
    assert spec.test.results == "out/results.xml"
    assert spec.test.env == (("KEY", "value"), ("NUM", "3"))
    vm = spec.vm
    assert (vm.memory_mib, vm.cpus, vm.network, vm.output_size_mib) == (2048, 2, "user", 128)
    assert (vm.wall_timeout_s, vm.debug) == (3600, True)
    assert spec.package_sets[0].selinux is False
    assert spec.known_failures == [KnownFailure("t1", "m1", "2026-01-01", "2026-01-31")]


def test_example_spec_loads():
    spec = load_spec(REPO / "examples" / "matrix.yaml")
    runs = expand(spec)
    assert len(runs) == 8
    assert {r.platform.name for r in runs} == {"debian-12", "debian-13"}
    assert any(r.source.upgrade_to for r in runs)
    assert spec.vm.network == "user"
    assert "dpkg-query" in spec.test.command
    assert spec.known_failures  # examples/known-failures.yaml, both entry forms
    check_platforms(spec, {"debian-12", "debian-13"})  # both are built-in recipes


# ------------------------------------------------------------------------------------------
# Bad input: every error names file, line and field
# ------------------------------------------------------------------------------------------


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.yaml", "platforms: [debian-12\nsources: []\n")
    err = spec_error(path)
    assert_names(err, path, 2, "platforms")  # the section the broken list started in
    assert "YAML syntax error" in str(err)
    path = write(tmp_path, "tab.yaml", MINIMAL.replace("  timeout: 20m", "\ttimeout: 20m"))
    assert_names(spec_error(path), path, 17, "test")
    path = write(tmp_path, "kf.yaml", "- [t, m, 2026-01-01, 2026-01-02\n- [x]\n")
    with pytest.raises(SpecError) as info:
        load_known_failures(path)
    assert_names(info.value, path, 2, "known_failures")


@pytest.mark.parametrize(
    ("text", "line", "field", "words"),
    [
        # unknown keys, at the top and nested, with a suggestion
        (MINIMAL + "packages_sets: []\n", 18, "packages_sets", "unknown key"),
        (MINIMAL.replace("timeout: 20m", "timout: 20m"), 17, "test.timout", "unknown key"),
        (
            MINIMAL.replace(
                "    repos: [main]\n  - label: stable ->", "    repo: [main]\n  - label: x ->"
            ),
            4,
            "sources[0].repo",
            "unknown key",
        ),
        # wrong types
        (MINIMAL.replace("[debian-12, debian-13]", "debian-12"), 1, "platforms", "expected a list"),
        (
            MINIMAL.replace("[openssh-server]", "openssh-server"),
            12,
            "package_sets[1].packages",
            "expected a list",
        ),
        (MINIMAL + "vm: {cpus: two}\n", 18, "vm.cpus", "whole number"),
        (MINIMAL + "vm: {debug: 3}\n", 18, "vm.debug", "true or false"),
        (MINIMAL + "vm: {network: bridge}\n", 18, "vm.network", "not one of"),
        (MINIMAL + "vm: {memory: lots}\n", 18, "vm.memory", "not a size"),
        (MINIMAL + "vm: {output_size: 0}\n", 18, "vm.output_size", "positive"),
        (MINIMAL.replace("20m", "20 minutes"), 17, "test.timeout", "not a duration"),
        (MINIMAL.replace("  timeout: 20m", "  format: xml"), 17, "test.format", "not one of"),
        (MINIMAL + "vm: {wall_timeout: 10m}\n", 18, "vm.wall_timeout", "longer than"),
        (MINIMAL.replace("./run-tests", "[a, b]"), 16, "test.command", "single value"),
        # missing keys
        (
            MINIMAL.replace("  - label: Web server\n", "  - name: Web server\n"),
            9,
            "package_sets[0].name",
            "unknown key",
        ),
        (MINIMAL.replace("  command: ./run-tests\n", ""), 15, "test.command", "missing"),
        (
            MINIMAL.replace("test:\n  command: ./run-tests\n  timeout: 20m\n", ""),
            1,
            "test",
            "missing 'test'",
        ),
        # duplicate keys are not silently dropped
        (MINIMAL + "platforms: [debian-13]\n", 18, "platforms", "duplicate key"),
        # a repo that is not defined: the source's line
        (
            MINIMAL.replace("upgrade_to: [main, updates]", "upgrade_to: [main, updatez]"),
            5,
            "sources[1].upgrade_to",
            "'updatez' of source 'stable -> updates' is not defined",
        ),
        (MINIMAL.replace("  updates: ", "  main: "), 14, "repositories.main", "own mirror"),
        (
            MINIMAL.replace(
                '"deb http://deb.debian.org/debian {suite}-updates main"',
                "http://deb.debian.org/debian",
            ),
            14,
            "repositories.updates",
            "apt source line",
        ),
        # empty matrix
        (MINIMAL.replace("[debian-12, debian-13]", "[]"), 1, "platforms", "empty list"),
        (
            MINIMAL.replace("platforms: [debian-12, debian-13]\n", ""),
            1,
            "platforms",
            "'platforms' is missing",
        ),
        ("test: {command: x}\n", 1, "platforms", "empty matrix"),
        ("", 1, "platforms", "empty matrix"),
        # odd values
        (MINIMAL.replace("debian-13]", "debian 13]"), 1, "platforms[1]", "bad platform name"),
        (
            MINIMAL.replace("[nginx-light, curl]", "[nginx-light curl]"),
            10,
            "package_sets[0].packages[0]",
            "no spaces",
        ),
        (MINIMAL + "test2: x\n", 18, "test2", "unknown key"),
        (MINIMAL + "known_failures: nowhere.yaml\n", 18, "known_failures", "no such file"),
        (
            MINIMAL.replace("  timeout: 20m", "  suite: missing-dir/"),
            17,
            "test.suite",
            "no such folder",
        ),
        ("- just\n- a list\n", 1, "(top level)", "expected a mapping"),
    ],
)
def test_bad_spec_names_file_line_and_field(tmp_path, text, line, field, words):
    path = write(tmp_path, "spec.yaml", text)
    err = spec_error(path)
    assert_names(err, path, line, field)
    assert words in str(err)


def test_unknown_key_suggests_the_right_one(tmp_path):
    err = spec_error(write(tmp_path, "s.yaml", MINIMAL.replace("package_sets:", "package_set:")))
    assert err.hint and "package_sets" in err.hint


def test_missing_file_and_empty_folder(tmp_path):
    err = spec_error(tmp_path / "nope.yaml")
    assert str(tmp_path / "nope.yaml") in str(err)
    (tmp_path / "empty").mkdir()
    err = spec_error(tmp_path / "empty")
    assert "no *.yaml" in str(err)


def test_bad_date_in_yaml_value_is_an_error_not_a_traceback(tmp_path):
    # 2026-13-01 looks like a YAML timestamp and makes PyYAML raise ValueError.
    path = write(tmp_path, "s.yaml", MINIMAL.replace("./run-tests", "2026-13-01"))
    err = spec_error(path)
    assert_names(err, path, 16, "test.command")


# ------------------------------------------------------------------------------------------
# Folders: merging, duplicates, conflicts
# ------------------------------------------------------------------------------------------

PART_A = """\
platforms: [debian-12]
sources: [{label: stable}]
package_sets:
  - {label: Web, packages: [curl]}
  - {label: SSH, packages: [openssh-server]}
test: {command: ./run-tests}
"""
PART_B = """\
platforms: [debian-12, debian-13]
sources: [{label: stable}]
package_sets:
  - {label: Web, packages: [curl]}
"""


def test_folder_merges_per_file_products_and_drops_duplicates(tmp_path):
    write(tmp_path, "a.yaml", PART_A)
    write(tmp_path, "b.yaml", PART_B)
    write(tmp_path, "notes.txt", "not a spec")
    spec = load_spec(tmp_path)
    runs = expand(spec)
    # a: 1 x 1 x 2 = 2 runs; b: 2 x 1 x 1 = 2 runs, of which (debian-12, stable, Web) is in a.
    assert [r.key for r in runs] == [
        ("debian-12", "stable", "Web"),
        ("debian-12", "stable", "SSH"),
        ("debian-13", "stable", "Web"),
    ]
    assert [r.id for r in runs] == ["0001", "0002", "0003"]
    assert spec.files == [tmp_path / "a.yaml", tmp_path / "b.yaml"]
    assert [p.name for p in spec.platforms] == ["debian-12", "debian-13"]


def test_same_file_twice_is_all_duplicates(tmp_path):
    write(tmp_path, "a.yaml", PART_A)
    write(tmp_path, "copy.yaml", PART_A)
    assert len(expand(load_spec(tmp_path))) == 2


def test_package_set_label_conflict_names_both_places(tmp_path):
    a = write(tmp_path, "a.yaml", PART_A)
    b = write(tmp_path, "b.yaml", PART_B.replace("[curl]", "[curl, wget]"))
    err = spec_error(tmp_path)
    assert f"{a}:4" in str(err) and f"{b}:4" in str(err)
    assert_names(err, b, 4, "package_sets[0].label")
    assert "'Web'" in str(err)


def test_source_label_conflict_names_both_places(tmp_path):
    a = write(tmp_path, "a.yaml", PART_A)
    b = write(tmp_path, "b.yaml", PART_B.replace("{label: stable}", "{label: stable, repos: [x]}"))
    err = spec_error(tmp_path)
    assert f"{a}:2" in str(err) and f"{b}:2" in str(err)
    assert_names(err, b, 2, "sources[0].label")


def test_test_settings_conflict_and_shared_settings_file(tmp_path):
    write(tmp_path, "a.yaml", PART_A)
    b = write(tmp_path, "b.yaml", PART_B + "test: {command: other}\n")
    err = spec_error(tmp_path)
    assert_names(err, b, 5, "test")
    assert f"{tmp_path / 'a.yaml'}:6" in str(err)
    # Settings may live in their own file; repositories defined in one file serve another.
    write(tmp_path, "b.yaml", PART_B.replace("{label: stable}", "{label: up, upgrade_to: [u]}"))
    write(tmp_path, "z-settings.yaml", 'repositories: {u: "deb http://x/ {suite} main"}\n')
    runs = expand(load_spec(tmp_path))
    assert runs[-1].repositories == (("u", "deb http://x/ {suite} main"),)


def test_platform_mapped_two_ways_is_an_error(tmp_path):
    write(tmp_path, "a.yaml", PART_A.replace("[debian-12]", "[{name: d, recipe: debian-12}]"))
    b = write(tmp_path, "b.yaml", PART_B.replace("[debian-12, debian-13]", "[{name: d, image: x}]"))
    err = spec_error(tmp_path)
    assert_names(err, b, 1, "platforms[0]")
    assert f"{tmp_path / 'a.yaml'}:1" in str(err)


# ------------------------------------------------------------------------------------------
# The OSG parameter-file format
# ------------------------------------------------------------------------------------------

OSG_A = """\
platforms:
  - rocky_9.x86_64
  - alma_9.x86_64
sources:
  - opensciencegrid:master; 24; osg
  - opensciencegrid:master; 24; osg > osg-testing
  - 23; osg-upcoming > 24/osg, osg-testing
package_sets:
  - label: Compute Entrypoint (Condor)
    packages:
      - osg-ce-condor
      - htcondor-ce-view
  - label: XRootD
    packages: [osg-xrootd-standalone]
    selinux: false
"""
OSG_B = """\
platforms: [rocky_9.x86_64]
sources:
  - opensciencegrid:master;24;   osg
package_sets:
  - label: XRootD
    packages: [osg-xrootd-standalone]
    selinux: false
"""


def test_osg_format_sources_and_dedup(tmp_path):
    write(tmp_path, "osg24-el9.yaml", OSG_A)
    write(tmp_path, "osg24-extra.yaml", OSG_B)
    spec = load_spec(tmp_path)
    runs = expand(spec)
    assert len(runs) == 2 * 3 * 2  # OSG_B's one run is already in OSG_A (whitespace aside)
    labels = [s.label for s in spec.sources]
    assert labels == ["24; osg", "24; osg > osg-testing", "23; osg-upcoming > 24/osg, osg-testing"]
    up = spec.sources[2]
    assert (up.series, up.repos, up.upgrade_series, up.upgrade_to, up.test_tool_ref) == (
        "23",
        ("osg-upcoming",),
        "24",
        ("osg", "osg-testing"),
        None,
    )
    assert spec.sources[0].test_tool_ref == "opensciencegrid:master"
    assert spec.package_sets[1].selinux is False
    # No recipe of that name here: unmapped until a platform_map says otherwise.
    assert spec.platforms[0] == Platform("rocky_9.x86_64")
    assert spec.test.format == "osg-test"
    assert spec.vm.network == "user"


def test_osg_sources_differing_only_in_branch_get_distinct_labels(tmp_path):
    text = OSG_B.replace(
        "  - opensciencegrid:master;24;   osg\n",
        "  - opensciencegrid:master; 24; osg\n  - someone:fix-1; 24; osg\n  - 24; osg\n",
    )
    spec = load_spec(write(tmp_path, "p.yaml", text))
    assert [s.label for s in spec.sources] == [
        "24; osg (opensciencegrid:master)",
        "24; osg (someone:fix-1)",
        "24; osg (packaged test tool)",
    ]
    assert len(expand(spec)) == 3


@pytest.mark.parametrize(
    "source",
    [
        "24 osg",  # no ';'
        "a:b; c; 24; osg",  # too many parts
        "not a ref; 24; osg",
        "24; osg > osg-testing > more",
        "24; osg,, epel",
        "24; osg > 25/",
    ],
)
def test_bad_osg_source_names_line_and_field(tmp_path, source):
    path = write(tmp_path, "p.yaml", OSG_B.replace("opensciencegrid:master;24;   osg", source))
    err = spec_error(path)
    assert_names(err, path, 3, "sources[0]")
    assert err.hint and "series; repo" in err.hint


def test_osg_package_set_needs_packages_and_known_keys(tmp_path):
    path = write(tmp_path, "p.yaml", OSG_B.replace("[osg-xrootd-standalone]", "[]"))
    assert_names(spec_error(path), path, 6, "package_sets[0].packages")
    path = write(tmp_path, "p.yaml", OSG_B.replace("selinux: false", "rng: true"))
    assert_names(spec_error(path), path, 7, "package_sets[0].rng")


def test_mixed_source_forms_in_one_file(tmp_path):
    path = write(tmp_path, "p.yaml", OSG_B.replace("   osg\n", "   osg\n  - {label: x}\n"))
    assert_names(spec_error(path), path, 4, "sources[1]")


def test_platform_map_from_spec_and_from_file(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "alma.qcow2").write_bytes(b"")
    params = tmp_path / "params"
    write(params, "osg24-el9.yaml", OSG_A)
    spec = load_spec(params)
    with pytest.raises(SpecError) as info:
        check_platforms(spec, {"debian-12", "debian-13"})
    err = info.value
    assert "rocky_9.x86_64" in str(err) and "alma_9.x86_64" in str(err)
    assert_names(err, params / "osg24-el9.yaml", 2, "platforms")
    assert err.hint and "platform_map" in err.hint

    mapfile = write(
        tmp_path, "map.yaml", "rocky_9.x86_64: debian-12\nalma_9.x86_64: {image: img/alma.qcow2}\n"
    )
    spec = load_spec(params, platform_map=mapfile)
    assert spec.platforms == [
        Platform("rocky_9.x86_64", recipe="debian-12"),
        Platform("alma_9.x86_64", image=tmp_path / "img" / "alma.qcow2"),
    ]
    check_platforms(spec, {"debian-12"})
    # The run keeps the OSG name, for reports.
    assert expand(spec)[0].platform.name == "rocky_9.x86_64"

    # A recipe name this machine does not have is named as such.
    with pytest.raises(SpecError, match="no built-in recipe named 'debian-12'"):
        check_platforms(spec, {"debian-13"})

    # The same map inside the spec folder, as a settings-only file; the CLI map wins over it.
    write(params, "zz-map.yaml", "platform_map:\n  rocky_9.x86_64: debian-13\n")
    spec = load_spec(params)
    assert spec.platforms[0].recipe == "debian-13" and spec.platforms[1].recipe is None
    spec = load_spec(params, platform_map={"rocky_9.x86_64": "debian-12"})
    assert spec.platforms[0].recipe == "debian-12"


def test_bad_platform_map_file(tmp_path):
    mapfile = write(tmp_path, "map.yaml", "rocky_9.x86_64: {recipe: a, image: b}\n")
    spec_file = write(tmp_path, "p.yaml", OSG_B)
    err = spec_error(spec_file, platform_map=mapfile)
    assert_names(err, mapfile, 1, "platform_map.rocky_9.x86_64.image")


@pytest.mark.skipif(not OSG_PARAMS.is_dir(), reason="../shared/peer-data is absent")
def test_real_osg_parameters_expand_to_1564_runs():
    spec = load_spec(OSG_PARAMS)
    runs = expand(spec)
    assert len(runs) == 1564
    assert len({r.key for r in runs}) == 1564
    assert runs[0].id == "0001" and runs[-1].id == "1564"
    labels = {s.label for s in spec.sources}
    assert "24; osg > osg-testing" in labels
    assert "23; osg-upcoming > 24/osg" in labels
    assert len(spec.platforms) == 12
    # Loading lists them (for `vmharness matrix`); running needs a mapping for each.
    with pytest.raises(SpecError) as info:
        check_platforms(spec, {"debian-12", "debian-13"})
    assert all(p.name in str(info.value) for p in spec.platforms)


def test_expand_without_matrices_is_the_plain_product():
    spec = Spec(
        path=Path("x"),
        platforms=[Platform("a"), Platform("b")],
        sources=[Source("s")],
        package_sets=[PackageSet("p"), PackageSet("q")],
    )
    assert [r.key for r in expand(spec)] == [
        ("a", "s", "p"),
        ("a", "s", "q"),
        ("b", "s", "p"),
        ("b", "s", "q"),
    ]


# ------------------------------------------------------------------------------------------
# Known failures
# ------------------------------------------------------------------------------------------


def test_known_failures_both_formats(tmp_path):
    path = write(
        tmp_path,
        "kf.yaml",
        """\
        # the OSG's own form
        - [test_04_trace, test_55_condorce, 2014-12-01, 2015-01-14]
        - test: test_05_pbs_trace
          module: test_55_condorce
          start: "2026-01-01"
          end: 2026-12-31
          reason: flaky on TCG
        """,
    )
    assert load_known_failures(path) == [
        KnownFailure("test_04_trace", "test_55_condorce", "2014-12-01", "2015-01-14"),
        KnownFailure(
            "test_05_pbs_trace", "test_55_condorce", "2026-01-01", "2026-12-31", "flaky on TCG"
        ),
    ]


def test_known_failures_empty_file_and_example(tmp_path):
    assert load_known_failures(write(tmp_path, "kf.yaml", "# nothing yet\n")) == []
    entries = load_known_failures(REPO / "examples" / "known-failures.yaml")
    assert len(entries) == 2 and all(e.start <= e.end for e in entries)


@pytest.mark.skipif(not OSG_EXCEPTIONS.is_file(), reason="../shared/peer-data is absent")
def test_osg_test_exceptions_file_loads():
    assert load_known_failures(OSG_EXCEPTIONS) == []  # today it holds only comments


@pytest.mark.parametrize(
    ("entry", "line", "field", "words"),
    [
        ("- [t, m, 2026-13-01, 2026-12-31]", 2, "known_failures[0].start", "bad date"),
        ("- [t, m, 2026-01-01, someday]", 2, "known_failures[0].end", "bad date"),
        (
            '- {test: t, module: m, start: "2026-02-30", end: 2026-03-01}',
            2,
            "known_failures[0].start",
            "bad date",
        ),
        ("- [t, m, 2026-02-01, 2026-01-01]", 2, "known_failures[0].end", "before start"),
        ("- [t, m, 2026-02-01]", 2, "known_failures[0]", "got 3 items"),
        ("- {test: t, module: m, start: 2026-01-01}", 2, "known_failures[0].end", "missing"),
        (
            "- {test: t, module: m, start: 2026-01-01, end: 2026-01-02, why: x}",
            2,
            "known_failures[0].why",
            "unknown key",
        ),
        ("- [t, m, 2026-01-01 10:00:00, 2026-01-02]", 2, "known_failures[0].start", "time"),
    ],
)
def test_bad_known_failure_names_file_line_and_field(tmp_path, entry, line, field, words):
    path = write(tmp_path, "kf.yaml", "# header\n" + entry + "\n")
    with pytest.raises(SpecError) as info:
        load_known_failures(path)
    assert_names(info.value, path, line, field)
    assert words in str(info.value)


def test_bad_date_in_spec_known_failures_names_that_file(tmp_path):
    kf = write(tmp_path, "kf.yaml", "- [t, m, 2026-01-01, 2026-02-31]\n")
    err = spec_error(write(tmp_path, "s.yaml", MINIMAL + "known_failures: kf.yaml\n"))
    assert_names(err, kf, 1, "known_failures[0].end")


# ------------------------------------------------------------------------------------------
# Durations and sizes
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 90),
        ("90", 90),
        ("90s", 90),
        ("20m", 1200),
        ("2h", 7200),
        ("1h30m", 5400),
        ("1d", 86400),
        (" 5M ", 300),
    ],
)
def test_parse_duration(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "20 minutes", "1.5h", "-5", 0, -1, True, None, "m"])
def test_parse_duration_rejects(value):
    with pytest.raises(SpecError) as info:
        parse_duration(value, file="f.yaml", line=3, field="test.timeout")
    assert "f.yaml:3: field 'test.timeout'" in str(info.value)


@pytest.mark.parametrize(
    ("value", "mib"),
    [
        (1024, 1024),
        ("512M", 512),
        ("2G", 2048),
        ("1.5G", 1536),
        ("64MiB", 64),
        ("1g", 1024),
        ("2048", 2048),
        ("1T", 1024 * 1024),
    ],
)
def test_parse_size_mib(value, mib):
    assert parse_size_mib(value) == mib


@pytest.mark.parametrize("value", ["", "lots", "100K", "0", 0, -2, False, "1.5M", None])
def test_parse_size_mib_rejects(value):
    with pytest.raises(SpecError) as info:
        parse_size_mib(value, file="f.yaml", line=7, field="vm.memory")
    assert "f.yaml:7: field 'vm.memory'" in str(info.value)


def test_known_failures_inline_in_spec(tmp_path):
    text = MINIMAL + "known_failures:\n  - [t, m, 2026-01-01, 2026-01-02]\n  - [t, m, 2026-01-01]\n"
    path = write(tmp_path, "s.yaml", text)
    assert_names(spec_error(path), path, 20, "known_failures[1]")
    spec = load_spec(write(tmp_path, "s.yaml", text.rsplit("  - [t", 1)[0]))
    assert spec.known_failures == [KnownFailure("t", "m", "2026-01-01", "2026-01-02")]
