"""The field table and the JSON Schema made from it (`vmharness schema`): no VM."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from conftest import EXAMPLES

from vmharness.cli import main
from vmharness.errors import SpecError
from vmharness.spec import json_schema, load_known_failures, load_spec
from vmharness.spec.fields import FIELDS, SECTIONS, TEST_KEYS, TOP_KEYS, VM_KEYS

SPEC = """\
platforms: [debian-12]
sources: [{label: stable, repos: [main]}]
package_sets: [{label: curl, packages: [curl]}]
test: {command: ./run-tests, timeout: 5m}
vm: {memory: 1G, cpus: 1}
"""


def as_json(data: Any) -> Any:
    """What an editor's YAML plugin hands its validator: YAML 1.2 has no dates, only text."""
    if isinstance(data, dict):
        return {str(k): as_json(v) for k, v in data.items()}
    if isinstance(data, list):
        return [as_json(v) for v in data]
    if isinstance(data, dt.date):
        return data.isoformat()
    return data


def validator(schema: dict | None = None) -> jsonschema.Draft202012Validator:
    schema = schema or json_schema()
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def errors(data: Any, schema: dict | None = None) -> list[str]:
    return [e.message for e in validator(schema).iter_errors(as_json(data))]


def test_the_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(json_schema())


def _example_files() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml"))


@pytest.mark.parametrize("path", _example_files(), ids=lambda p: p.name)
def test_every_example_validates_and_loads(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    if isinstance(data, list):  # a known-failures list (examples/known-failures.yaml)
        schema = json_schema()
        kf = {"$schema": schema["$schema"], "$defs": schema["$defs"]}
        kf["$ref"] = "#/$defs/known_failure_list"
        assert errors(data, kf) == []
        assert load_known_failures(path)
        return
    assert errors(data) == []
    assert load_spec(path).platforms


def test_examples_are_there() -> None:
    """The parametrised test above must not pass by having nothing to check."""
    names = {p.name for p in _example_files()}
    assert {"matrix.yaml", "smoke.yaml", "known-failures.yaml"} <= names


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("package_sets:", "package_set:"),  # top level
        ("timeout: 5m", "timout: 5m"),  # in test
        ("cpus: 1", "cpu: 1"),  # in vm
        ("repos: [main]", "repo: [main]"),  # in a source
        ("packages: [curl]", "package: [curl]"),  # in a package set (and a required key gone)
    ],
)
def test_a_misspelt_key_fails_the_schema_and_the_loader(tmp_path: Path, old: str, new: str):
    assert errors(yaml.safe_load(SPEC)) == []
    text = SPEC.replace(old, new)
    assert text != SPEC
    assert errors(yaml.safe_load(text)), "the schema let a misspelt key through"
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match="unknown key"):
        load_spec(path)


@pytest.mark.parametrize(
    ("section", "keys"), [("", TOP_KEYS), ("test", TEST_KEYS), ("vm", VM_KEYS)]
)
def test_the_loader_reads_exactly_the_keys_of_the_table(tmp_path: Path, section, keys) -> None:
    """The readers' key lists come from the table: a key not in it is refused with a hint."""
    assert keys == tuple(f.key for f in FIELDS if f.section == section)
    for key in keys:
        wrong = key + "_x"
        if section:
            text = SPEC.replace(f"{section}: {{", f"{section}: {{{wrong}: 1, ")
        else:
            text = SPEC + f"{wrong}: 1\n"
        path = tmp_path / "spec.yaml"
        path.write_text(text)
        with pytest.raises(SpecError) as info:
            load_spec(path)
        assert "unknown key" in str(info.value)
        assert info.value.hint and key in info.value.hint
        assert errors(yaml.safe_load(text))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("network: user", "network: bridge"),
        ("memory: 1G", "memory: lots"),
        ("timeout: 10m", "timeout: 10 minutes"),
        ("cpus: 1", "cpus: 0"),
        ("format: exit-code", "format: xml"),
        ("[debian-12, debian-13]", "[debian 12]"),
        ('updates: "deb http', 'updates: "http'),
    ],
)
def test_bad_values_fail_the_schema(old: str, new: str) -> None:
    text = (EXAMPLES / "matrix.yaml").read_text()
    assert old in text
    assert errors(yaml.safe_load(text.replace(old, new)))


def test_a_matrix_key_needs_the_other_two() -> None:
    assert errors({"platforms": ["debian-12"]})
    assert errors({"test": {"command": "true"}}) == []  # a settings-only file of a folder


def test_every_field_has_help_and_every_section_is_in_the_schema() -> None:
    schema = json_schema()
    for f in FIELDS:
        assert f.help, f"{f.path} has no help"
    for section in SECTIONS:
        if section:
            assert section in schema["$defs"]


def test_schema_command_prints_it_and_writes_it(tmp_path: Path, capsys) -> None:
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json_schema()
    out = tmp_path / "sub" / "vmharness.schema.json"
    assert main(["schema", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == json_schema()
    assert capsys.readouterr().out == ""
