"""Real VMs that must not harm the host: a guest flooding its serial console gets a bounded
console.log, and no qemu outlives its vmharness (SIGTERM: stopped cleanly, the folder resumes;
SIGKILL: the kernel kills them). See test_qemu_host.py for the same without VMs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import kill_pids, qemu_pids_under, spec_text
from test_vm import db_rows, finish, start_cli

from vmharness.vm.console import CONSOLE_LIMIT

pytestmark = pytest.mark.vm

# ~12 MB through the serial port (8 MiB is kept): about 40 s under TCG.
FLOOD = """\
{ echo FLOOD-HEAD; yes "flood line 0123456789 abcdefghijklmnopqrstuvwxyz" | head -c 12000000
  echo; echo FLOOD-TAIL; } > /dev/ttyS0
"""


@pytest.fixture(scope="module")
def floods(base_image, tmp_path_factory):
    """The flood run twice at once: restored from a snapshot (after the snapshot's boot
    console) and booted from disk."""
    base = tmp_path_factory.mktemp("flood")
    spec = base / "flood.yaml"
    spec.write_text(spec_text(FLOOD, timeout="5m", wall_timeout="10m"))
    procs = {
        boot: start_cli(
            "run",
            spec,
            "--out",
            base / boot,
            "--boot",
            boot,
            "--json",
            base / boot / "r.json",
            log=base / f"{boot}.log",
        )
        for boot in ("snapshot", "disk")
    }
    codes = {boot: finish(proc, base / f"{boot}.log") for boot, proc in procs.items()}
    left = qemu_pids_under(base)
    kill_pids(left)
    assert not left, "qemu still running after vmharness ended"
    return {boot: (codes[boot], base / boot) for boot in procs}


@pytest.mark.parametrize("boot", ["snapshot", "disk"])
def test_a_console_flood_is_capped_and_the_run_passes(floods, boot: str) -> None:
    code, out = floods[boot]
    assert code == 0
    (run,) = json.loads((out / "r.json").read_text())["runs"]
    assert run["status"] == "pass", run["reason"]
    console = (out / run["log_dir"] / "console.log").read_bytes()
    print(f"console.log: {len(console)} bytes")
    assert len(console) <= CONSOLE_LIMIT + 1024
    head, _, tail = console.partition(b"bytes of console output dropped here")
    assert tail, "no line says what was dropped"
    dropped = int(re.search(rb"\[vmharness: (\d+) $", head[-40:]).group(1))
    assert dropped > 12_000_000 - CONSOLE_LIMIT
    assert b"FLOOD-HEAD" in head and b"FLOOD-TAIL" in tail
    if boot == "snapshot":  # the snapshot's boot console first, then the restored VM's
        order = [b"ready for a snapshot", b"restored from snapshot", b"found the run's disks"]
        where = [head.find(text) for text in order]
        assert -1 not in where and where == sorted(where), where
    # What came after the flood is there, to the kernel's last word (the agent's own last line
    # goes through journald and may lose the race with the power-off).
    assert b"reboot: Power down" in tail[-2000:], tail[-300:]


SLEEPER = "sleep 40; echo slept"


def _wait_for_qemu(out: Path, proc: subprocess.Popen[bytes], timeout: float = 300) -> list[int]:
    deadline = time.monotonic() + timeout
    while not (pids := qemu_pids_under(out)):
        assert proc.poll() is None, f"vmharness ended (exit {proc.returncode}) before its VM"
        assert time.monotonic() < deadline, f"no VM within {timeout}s"
        time.sleep(0.2)
    return pids


def _gone(out: Path, within: float) -> list[int]:
    deadline = time.monotonic() + within
    while (left := qemu_pids_under(out)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_sigterm_stops_the_vms_and_the_folder_resumes(
    base_image, tmp_path: Path, no_vm_left_behind
) -> None:
    """A cancelled CI job or `timeout`: handled as Ctrl-C, exit 143, then `resume` finishes."""
    spec = tmp_path / "sleep.yaml"
    spec.write_text(spec_text(SLEEPER, timeout="2m", wall_timeout="5m"))
    out = tmp_path / "run"
    proc = start_cli("run", spec, "--out", out, log=tmp_path / "run.log")
    _wait_for_qemu(out, proc)
    time.sleep(3)
    os.kill(proc.pid, signal.SIGTERM)  # vmharness alone, not its process group
    code = finish(proc, tmp_path / "run.log", timeout=90)
    left = _gone(out, within=5)
    assert not left, f"qemu still running after vmharness ended: {left}"
    assert code == 143
    assert "Traceback" not in (tmp_path / "run.log").read_text()
    assert db_rows(out, "SELECT state FROM runs") == [("pending",)]
    assert db_rows(out, "SELECT attempt, status FROM attempts") == [(1, "interrupted")]

    proc = start_cli("resume", out, "--json", out / "r.json", log=tmp_path / "resume.log")
    assert finish(proc, tmp_path / "resume.log") == 0
    assert db_rows(out, "SELECT state, status FROM runs") == [("done", "pass")]
    rows = db_rows(out, "SELECT attempt, status FROM attempts ORDER BY attempt")
    assert rows == [(1, "interrupted"), (2, "pass")]


@pytest.mark.parametrize("boot", ["snapshot", "disk"])
def test_sigkill_of_vmharness_kills_its_vms(
    base_image, tmp_path: Path, boot: str, no_vm_left_behind
) -> None:
    """kill -9: no handler of ours runs; the kernel ends the VMs (a restored one would wait for
    its incoming state for ever, a booting one run its whole test)."""
    spec = tmp_path / "sleep.yaml"
    spec.write_text(spec_text(SLEEPER, timeout="2m", wall_timeout="5m"))
    out = tmp_path / "run"
    proc = start_cli("run", spec, "--out", out, "--boot", boot, log=tmp_path / "run.log")
    pids = _wait_for_qemu(out, proc)
    os.kill(proc.pid, signal.SIGKILL)  # vmharness alone: its VMs are in sessions of their own
    proc.wait()
    left = _gone(out, within=5)
    assert not left, f"qemu {left} (of {pids}) still running 5 s after vmharness was killed"
