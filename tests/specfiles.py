"""Spec files made for tests: a small good spec, and how a refusal is checked."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from vmharness.errors import EXIT_USAGE, SpecError
from vmharness.spec import expand, load_spec

SPEC = """\
platforms: [debian-12]
sources: [{label: stable, repos: [main]}]
package_sets: [{label: base, packages: []}]
test:
  command: ./run-tests
vm:
  memory: 512M
"""
#        line 7 is `  memory: 512M`; a key added after it is on line 8


def write(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(textwrap.dedent(text))
    return path


def spec_error(path: Path) -> SpecError:
    with pytest.raises(SpecError) as info:
        expand(load_spec(path))
    return info.value


def assert_names(err: SpecError, path: Path, line: int | None, field: str | None) -> None:
    text = str(err)
    assert err.file == str(path), text
    if line is not None:
        assert err.line == line and f"{path}:{line}" in text, text
    if field is not None:
        assert err.field == field and f"field '{field}'" in text, text
    assert err.exit_code == EXIT_USAGE
    assert err.hint, f"no 'what to do' for: {text}"
