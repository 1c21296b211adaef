"""What protects the host from its VMs, without a VM: the console markers the host waits for,
the cap on a VM's console log, the free-space check, and qemu's lifetime tied to vmharness's.
(tests/vm/test_vm_host.py does the same with real VMs.)"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vmharness.engine.local import check_disk_space
from vmharness.errors import InfraError
from vmharness.spec import PackageSet, Platform, Run, Source, VMSettings
from vmharness.spec import TestSettings as Settings
from vmharness.vm import qemu as local
from vmharness.vm.console import CONSOLE_HEAD, CONSOLE_LIMIT, CONSOLE_TAIL, ConsoleLog
from vmharness.vm.job import VMJob
from vmharness.vm.lifetime import spawn

MARKER = local.DISKS_FOUND_MARKER


class FakeVM:
    """A qemu that keeps running: all `_wait_for_marker` asks of its process."""

    returncode = None

    def poll(self):
        return None


def _append_later(path: Path, *parts: bytes, pause: float = 0.2) -> threading.Thread:
    def write() -> None:
        for part in parts:
            time.sleep(pause)
            with open(path, "ab") as f:
                f.write(part)

    thread = threading.Thread(target=write)
    thread.start()
    return thread


def test_a_marker_followed_by_lots_of_output_in_one_go_is_seen(tmp_path: Path) -> None:
    """The guest says the marker and 100 KiB more before the host's next look."""
    console = tmp_path / "console.log"
    console.write_bytes(b"booting\n" * 10)
    writer = _append_later(console, b"early lines\n" + MARKER + b"\n" + b"x" * (100 << 10))
    t0 = time.monotonic()
    local._wait_for_marker(FakeVM(), console, MARKER, timeout_s=5)
    writer.join()
    assert time.monotonic() - t0 < 4


@pytest.mark.parametrize("cut", [1, 7, len(MARKER) - 1])
def test_a_marker_cut_between_two_looks_is_seen(tmp_path: Path, cut: int) -> None:
    console = tmp_path / "console.log"
    console.write_bytes(b"")
    first = b"y" * (200 << 10) + MARKER[:cut]
    writer = _append_later(console, first, MARKER[cut:] + b"z" * (100 << 10))
    local._wait_for_marker(FakeVM(), console, MARKER, timeout_s=5)
    writer.join()


def test_a_marker_before_the_offset_does_not_count(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_bytes(MARKER + b"\n" + b"later output\n")
    with pytest.raises(local._SnapshotFailed, match="later output"):
        local._wait_for_marker(FakeVM(), console, MARKER, timeout_s=0.5, offset=len(MARKER))


@pytest.mark.parametrize("size", [1, 2, 5, len(MARKER), 4096])
def test_the_scan_finds_a_marker_whatever_the_piece_size(size: int) -> None:
    stream = b"a" * 5000 + MARKER + b"b" * 5000
    scan = local.MarkerScan(MARKER)
    pieces = [stream[i : i + size] for i in range(0, len(stream), size)]
    found_at = next(i for i, piece in enumerate(pieces) if scan.feed(piece))
    assert (found_at + 1) * size >= 5000 + len(MARKER) > found_at * size
    for piece in pieces[found_at + 1 :]:
        assert scan.feed(piece)
    assert scan.recent == stream[-4096:]


# -- the console log's cap (console.py) ---------------------------------------------------------
def _stream(log: ConsoleLog, data: bytes, piece: int = 1 << 16) -> None:
    """Feed `data` to a started ConsoleLog through a pipe, as qemu's stdout would, then end."""
    r, w = os.pipe()
    log.start(os.fdopen(r, "rb", buffering=0))
    for i in range(0, len(data), piece):
        os.write(w, data[i : i + piece])
    os.close(w)
    log.close(timeout=30)


def _flood(size: int) -> bytes:
    lines = b"".join(b"flood line %08d of the guest's console\n" % i for i in range(size // 40 + 1))
    return b"FLOOD-HEAD\n" + lines[: size - 22] + b"FLOOD-TAIL\n"


def test_a_console_flood_keeps_head_tail_and_says_what_was_dropped(tmp_path: Path) -> None:
    data = _flood(20 << 20)
    log = ConsoleLog(tmp_path / "console.log")
    _stream(log, data)
    text = (tmp_path / "console.log").read_bytes()
    assert len(text) <= CONSOLE_LIMIT + 300
    assert text.startswith(data[:CONSOLE_HEAD]) and text.endswith(data[-CONSOLE_TAIL:])
    dropped = len(data) - CONSOLE_HEAD - CONSOLE_TAIL
    line = text[CONSOLE_HEAD : len(text) - CONSOLE_TAIL]
    assert re.fullmatch(rb"\n\[vmharness: (\d+) bytes of console output dropped here.*\]\n", line)
    assert int(re.search(rb"(\d+) bytes", line).group(1)) == dropped == log.dropped


def test_a_console_within_the_cap_is_kept_whole(tmp_path: Path) -> None:
    data = _flood(CONSOLE_LIMIT - 1000)
    log = ConsoleLog(tmp_path / "console.log")
    _stream(log, data, piece=4093)
    assert (tmp_path / "console.log").read_bytes() == data
    assert log.dropped == 0


def test_a_restored_vms_console_follows_its_snapshots_boot(tmp_path: Path) -> None:
    """The snapshot's boot console is there first and counts toward the head."""
    path = tmp_path / "console.log"
    boot = b"booted from the snapshot\n" * 4000
    path.write_bytes(boot)
    data = _flood(12 << 20)
    _stream(ConsoleLog(path, append=True), data)
    text = path.read_bytes()
    assert text.startswith(boot + data[: CONSOLE_HEAD - len(boot)])
    assert text.endswith(data[-CONSOLE_TAIL:]) and len(text) <= CONSOLE_LIMIT + 300


def test_the_console_is_on_disk_as_it_comes(tmp_path: Path) -> None:
    """The host polls console.log for the agent's markers while the VM runs."""
    path = tmp_path / "console.log"
    log = ConsoleLog(path)
    r, w = os.pipe()
    log.start(os.fdopen(r, "rb", buffering=0))
    try:
        os.write(w, b"x" * (3 << 20) + MARKER + b"\n" + b"y" * (100 << 10))
        local._wait_for_marker(FakeVM(), path, MARKER, timeout_s=10)
    finally:
        os.close(w)
        log.close()


def test_a_console_that_cannot_be_written_is_still_drained(tmp_path: Path) -> None:
    """A full disk must not stall the guest on its serial port: the pipe keeps being read."""
    log = ConsoleLog(Path("/dev/full"))
    t0 = time.monotonic()
    _stream(log, b"z" * (4 << 20))
    assert time.monotonic() - t0 < 20
    assert log.received == 4 << 20 and log.error is not None


# -- free disk space before VMs start ------------------------------------------------------------
def _little_space(monkeypatch, free: int = 5 << 20) -> None:
    usage = shutil.disk_usage("/")
    monkeypatch.setattr(local.shutil, "disk_usage", lambda p: usage._replace(free=free))


def test_a_vm_does_not_start_without_room_for_it(tmp_path: Path, monkeypatch) -> None:
    _little_space(monkeypatch)

    def must_not_start(*args, **kw):
        raise AssertionError("a VM was started")

    monkeypatch.setattr(local.VMProcesses, "start", must_not_start)
    (tmp_path / "out.img").write_bytes(b"\0" * 4096)
    with pytest.raises(InfraError) as info:
        local.LocalVMs("tcg")(
            VMJob(
                name="vmharness-0001",
                base_disk=tmp_path / "disk.qcow2",
                kernel=None,
                initrd=None,
                cmdline="",
                input_disk=tmp_path / "in.img",
                output_disk=tmp_path / "out.img",
                workdir=tmp_path,
                console_log=tmp_path / "console.log",
            )
        )
    message = str(info.value)
    assert str(tmp_path) in message and "5 MiB free" in message
    assert f"{local.vm_disk_need(4096) >> 20} MiB" in message
    assert info.value.hint and "--out" in info.value.hint


def test_the_engine_checks_room_for_the_vms_at_once(tmp_path: Path, monkeypatch) -> None:
    runs = [
        Run(
            id=f"{n:04d}",
            platform=Platform("p"),
            source=Source("s"),
            package_set=PackageSet(f"k{n}"),
            test=Settings(),
            vm=VMSettings(output_size_mib=64),
        )
        for n in range(5)
    ]
    one = local.vm_disk_need(64 << 20)
    _little_space(monkeypatch, free=3 * one - 1)
    check_disk_space(tmp_path, runs, slots=2)
    with pytest.raises(InfraError, match=rf"3 VM\(s\) at once would need about {3 * one >> 20}"):
        check_disk_space(tmp_path, runs, slots=3)


# -- qemu dies with vmharness (lifetime.py) -------------------------------------------------------
def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_vm_outlives_the_worker_thread_that_started_it() -> None:
    """The kernel's parent-death signal follows the forking thread: worker threads come and go,
    so they must not be the ones that fork."""
    started: list = []
    worker = threading.Thread(target=lambda: started.append(spawn(["sleep", "60"])))
    worker.start()
    worker.join()
    (proc,) = started
    try:
        time.sleep(0.5)
        assert proc.poll() is None, "the VM died with the thread that asked for it"
    finally:
        proc.kill()
        proc.wait()


def test_a_crashing_vm_leaves_no_core_file(tmp_path: Path) -> None:
    """A qemu that aborts (a failing KVM probe does: an assertion) dumps no core: one is as
    large as the guest's memory, and a root-owned one in a pool job's sandbox breaks the
    job's file transfer."""
    import resource

    was = resource.getrlimit(resource.RLIMIT_CORE)
    if was[1] == 0:
        pytest.skip("core files are off for this process already: nothing to show")
    resource.setrlimit(resource.RLIMIT_CORE, (was[1], was[1]))  # as a pool's daemons may run
    try:
        proc = spawn(["sh", "-c", "ulimit -c; kill -ABRT $$"], stdout=subprocess.PIPE, cwd=tmp_path)
        out, _ = proc.communicate(timeout=30)
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, was)
    assert out.decode().strip() == "0"  # the limit the child had: no core file at all
    assert proc.returncode == -signal.SIGABRT
    assert not list(tmp_path.iterdir())


HOLDER = """
import sys, time
from vmharness.vm.lifetime import spawn
proc = spawn(["sleep", "300"], start_new_session=True)
print(proc.pid, flush=True)
time.sleep(300)
"""


def test_a_vm_dies_when_its_vmharness_is_killed() -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True, env=env
    )
    assert holder.stdout is not None
    child = int(holder.stdout.readline())
    try:
        assert _alive(child)
        holder.kill()  # kill -9: no handler, no clean-up of ours runs
        holder.wait()
        deadline = time.monotonic() + 5
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the child lived on after its vmharness was killed"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
