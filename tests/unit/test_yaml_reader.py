"""The one reader of users' YAML (spec/yamlread.py), for specs, known failures and recipes:
plain UTF-8 YAML in a regular file, each key once; anything else is refused, naming file, line
and field, before it is read.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from specfiles import SPEC, assert_names, spec_error, write

from vmharness.errors import SpecError
from vmharness.images.recipe import load_recipe
from vmharness.spec import load_known_failures, load_spec

# -- YAML the reader refuses: tags, repeated keys, not UTF-8, not a regular file ---------------


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        (SPEC.replace("./run-tests", "!!str 5"), 5, "test.command"),
        (SPEC.replace("vm:\n", "vm: !!map\n"), 6, "vm"),
        (SPEC.replace("  memory: 512M", "  memory: !!binary aGVsbG8="), 7, "vm.memory"),
        (SPEC.replace("[debian-12]", "[!custom debian-12]"), 1, "platforms[0]"),
        (SPEC + "known_failures: [!!python/tuple [t, m, 2026-01-01, 2026-01-02]]\n", 8, None),
    ],
)
def test_yaml_tags_are_refused(tmp_path: Path, text: str, line: int, field: str | None) -> None:
    path = write(tmp_path, "s.yaml", text)
    err = spec_error(path)
    assert_names(err, path, line, field or "known_failures[0]")
    assert "YAML tag" in str(err)


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        (SPEC + "  memory: 1G\n", 8, "vm.memory"),
        (SPEC.replace("[{label: base, packages: []}]", "[{label: a, label: b, packages: []}]"),
         3, "package_sets[0].label"),
    ],
)  # fmt: skip
def test_repeated_keys_are_refused(tmp_path: Path, text: str, line: int, field: str) -> None:
    path = write(tmp_path, "s.yaml", text)
    err = spec_error(path)
    assert_names(err, path, line, field)
    assert "duplicate key" in str(err)


def test_a_known_failures_file_with_a_tag_or_a_repeated_key(tmp_path: Path) -> None:
    path = write(tmp_path, "kf.yaml", "- {test: t, test: u, module: m, start: 2026-01-01}\n")
    with pytest.raises(SpecError) as info:
        load_known_failures(path)
    assert_names(info.value, path, 1, "known_failures[0].test")
    path = write(tmp_path, "kf.yaml", "- !!set {t, m}\n")
    with pytest.raises(SpecError) as info:
        load_known_failures(path)
    assert_names(info.value, path, 1, "known_failures[0]")


@pytest.mark.timeout(20)
def test_a_fifo_given_as_the_spec_does_not_stall(tmp_path: Path) -> None:
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    err = spec_error(fifo)
    assert_names(err, fifo, None, None)
    assert "not a regular file" in str(err)


# -- recipes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "line", "field", "words"),
    [
        (b"suite: bookworm\nhostname: caf\xe9.example\n", 2, "hostname", "not UTF-8"),
        (b"suite: bookworm\nsuite: trixie\n", 2, "suite", "duplicate key"),
        (b"certificate: {cert: a.pem, cert: b.pem}\n", 1, "certificate.cert", "duplicate key"),
        (b"suite: !!python/name:os.system\n", 1, "suite", "YAML tag"),
        (b"packages: !!set {curl}\n", 1, "packages", "YAML tag"),
    ],
)
def test_a_recipe_that_is_no_plain_utf8_yaml(tmp_path: Path, data, line, field, words) -> None:
    path = write(tmp_path, "r.yaml", data)
    with pytest.raises(SpecError) as info:
        load_recipe(str(path))
    assert_names(info.value, path, line, field)
    assert words in str(info.value)


# -- files that would fill memory or stall the readers ---------------------------------------


def test_aliases_that_stand_for_too_much_are_refused(tmp_path: Path) -> None:
    """A thousand package sets aliasing one list of a thousand packages: a million reads."""
    items = ", ".join(f"p{i}" for i in range(1000))
    sets = "\n".join(f"  - {{label: l{i}, packages: *p}}" for i in range(1, 1000))
    text = SPEC.replace(
        "package_sets: [{label: base, packages: []}]\n",
        f"package_sets:\n  - {{label: l0, packages: &p [{items}]}}\n{sets}\n",
    )
    path = write(tmp_path, "s.yaml", text)
    err = spec_error(path)
    assert "values once its aliases are expanded" in str(err)
    assert err.line and err.line > 3 and err.field and err.field.startswith("package_sets[")
    assert_names(err, path, None, None)


def test_a_few_aliases_are_fine(tmp_path: Path) -> None:
    text = SPEC.replace(
        "package_sets: [{label: base, packages: []}]\n",
        "package_sets:\n  - {label: a, packages: &p [curl, jq]}\n  - {label: b, packages: *p}\n",
    )
    spec = load_spec(write(tmp_path, "s.yaml", text))
    assert [ps.packages for ps in spec.package_sets] == [("curl", "jq"), ("curl", "jq")]


def test_a_file_far_too_big_is_not_read(tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", SPEC + ("# padding" + " " * 90 + "\n") * 50_000)
    err = spec_error(path)
    assert_names(err, path, None, None)
    assert "too big" in str(err)
