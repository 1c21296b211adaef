"""The host's and the guest agent's copies of what they agree on are the same.

The agent is standard-library Python copied into the image, so it keeps its own copies of
vmharness.wire.guest's constants; they are read from its source with `ast` (not imported: it is
a program, not a module of ours) and compared.
"""

from __future__ import annotations

import ast
import contextlib
from pathlib import Path
from typing import Any

import pytest

from vmharness.images import disks
from vmharness.vm import qemu
from vmharness.wire import guest

AGENT = Path(__file__).resolve().parents[2] / "src" / "vmharness" / "guest" / "vmharness-agent"
# Host names the agent spells otherwise.
DIFFERENT = {"CONDITIONS_VERSION": "CONDITIONS_VERSIONS"}  # the agent lists what it reads
HOST = {name: value for name, value in vars(guest).items() if name.isupper()}


def constants(source: str) -> dict[str, Any]:
    """Module-level NAME = <literal> assignments of a Python source."""
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id.isupper():
                with contextlib.suppress(ValueError):  # not a literal: computed at run time
                    found[target.id] = ast.literal_eval(node.value)
    return found


@pytest.fixture(scope="module")
def agent() -> dict[str, Any]:
    return constants(AGENT.read_text())


def test_the_host_has_every_constant_of_the_protocol() -> None:
    assert {
        "INPUT_LABEL",
        "OUTPUT_LABEL",
        "CONDITIONS_FILE",
        "CONDITIONS_VERSION",
        "SUITE_DIR",
        "RESULT_FILE",
        "RESULT_VERSION",
        "AGENT_LOG",
        "TEST_LOG",
        "TEST_DIR",
        "SNAPSHOT_FLAG",
        "READY_MARKER",
        "DISKS_FOUND_MARKER",
    } <= set(HOST)


@pytest.mark.parametrize("name", sorted(HOST))
def test_the_agent_has_the_same_value(agent: dict[str, Any], name: str) -> None:
    theirs = DIFFERENT.get(name, name)
    assert theirs in agent, f"the agent has no {theirs} (vmharness.wire.guest.{name})"
    if name in DIFFERENT:
        assert HOST[name] in agent[theirs], f"the agent does not read {name} {HOST[name]!r}"
    else:
        assert agent[theirs] == HOST[name], f"{name}: host {HOST[name]!r}, agent {agent[theirs]!r}"


def test_the_comparison_sees_a_difference() -> None:
    """The check can fail: an agent whose output label differs is caught."""
    changed = AGENT.read_text().replace('OUTPUT_LABEL = "VMHOUTPUT"', 'OUTPUT_LABEL = "VMHOUT"')
    assert constants(changed)["OUTPUT_LABEL"] != HOST["OUTPUT_LABEL"]


def test_the_host_uses_the_wire_constants() -> None:
    assert (disks.INPUT_LABEL, disks.OUTPUT_LABEL) == (guest.INPUT_LABEL, guest.OUTPUT_LABEL)
    assert qemu.SNAPSHOT_FLAG == guest.SNAPSHOT_FLAG
    assert (
        guest.READY_MARKER.encode(),
        guest.DISKS_FOUND_MARKER.encode(),
    ) == (qemu.READY_MARKER, qemu.DISKS_FOUND_MARKER)
