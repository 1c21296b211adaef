"""Fuzzing the spec loader: random YAML-ish text and random structures dumped to YAML give a
spec or a SpecError naming its file, and never any other exception (no traceback for a user).
Examples are derandomised (the same on every run, so a failure is reproducible) and bounded.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmharness.errors import EXIT_USAGE, SpecError
from vmharness.images.recipe import load_recipe
from vmharness.spec import TEST_KEYS, VM_KEYS, expand, load_known_failures, load_spec

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure is reproducible
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_KEYS = [
    "platforms", "sources", "package_sets", "repositories", "test", "vm", "known_failures",
    "platform_map", "label", "repos", "upgrade_to", "packages", "selinux", "name", "recipe",
    "image", "command", "suite", "timeout", "format", "results", "env", "memory", "cpus",
    "network", "output_size", "wall_timeout", "debug", "start", "end", "<<",
]  # fmt: skip
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True)
    | st.sampled_from(["20m", "2G", "1h30m", "0", "main", "deb http://x {suite} main", "/"])
    | st.text(max_size=20)
    | st.dates().map(str)
)
# Values at and past every limit (durations and sizes no timer or disk holds, huge counts).
_absurd = st.sampled_from(
    ["9" * 5000 + "s", "9" * 400 + "M", "1e400", "400d", "1T", ".inf", "-1", 2**70, "/"]
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=25,
)
_YAMLISH = [
    "platforms:", "sources:", "package_sets:", "test:", "vm:", "known_failures:", " - ",
    "  ", "\n", ": ", "[", "]", "{", "}", ",", "label: ", "&a ", "*a", "<<: *a", "!!str ",
    "!x ", "---\n", "...\n", "'", '"', "#", "|\n", ">\n", "? ", "%YAML 1.1\n", "\t", "\x00",
    "é", "\ufeff", "debian-12", "2026-01-01", "20m", "2G", "command: x", "cpus: 2",
    "suite: ", "packages: ", "certificate: ", "timeout: ", "output_size: ", "memory: ",
    "9" * 400 + "M", "9" * 5000 + "s", "\udcff",  # the last one is not UTF-8 once written
]  # fmt: skip
_yamlish = st.lists(st.sampled_from(_YAMLISH) | st.text(max_size=5), max_size=40).map("".join)


def _only_spec_errors(load, path: Path) -> None:
    """`load(path)` succeeds or raises a SpecError naming the file; anything else fails."""
    try:
        load(path)
    except SpecError as err:
        assert err.exit_code == EXIT_USAGE
        assert err.file, f"an error without its file: {err}"


def _spec(path: Path) -> None:
    expand(load_spec(path))


@FUZZ
@given(text=_yamlish)
def test_fuzz_yamlish_text(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    _only_spec_errors(_spec, path)
    _only_spec_errors(load_known_failures, path)
    _only_spec_errors(lambda p: load_recipe(str(p)), path)


_BASE = {
    "platforms": ["debian-12"],
    "sources": [{"label": "stable"}],
    "package_sets": [{"label": "base", "packages": []}],
    "test": {"command": "./run-tests"},
}
_sections = {
    "platforms": st.lists(_scalars | st.dictionaries(st.sampled_from(_KEYS), _values), max_size=3),
    "sources": st.lists(st.dictionaries(st.sampled_from(_KEYS[8:11]), _values), max_size=3),
    "package_sets": st.lists(st.dictionaries(st.sampled_from(_KEYS[8:13]), _values), max_size=3),
    "repositories": st.dictionaries(st.text(max_size=6), _values, max_size=3),
    "test": st.dictionaries(st.sampled_from(TEST_KEYS), _absurd | _values, max_size=4),
    "vm": st.dictionaries(st.sampled_from(VM_KEYS), _absurd | _values, max_size=4),
    "known_failures": _values,
    "platform_map": st.dictionaries(st.text(max_size=6), _values, max_size=3),
}


@FUZZ
@given(
    section=st.sampled_from(sorted(_sections)),
    data=st.data(),
    everything=st.dictionaries(st.sampled_from(_KEYS[:8]), _values, max_size=8),
)
def test_fuzz_structures(tmp_path: Path, section: str, data, everything: dict) -> None:
    """One section at a time in an otherwise good spec (so its reader is reached), then all."""
    spec = {**_BASE, section: data.draw(_sections[section])}
    for doc in (spec, everything):
        path = tmp_path / "fuzz.yaml"
        path.write_text(yaml.safe_dump(doc, allow_unicode=True))
        _only_spec_errors(_spec, path)
