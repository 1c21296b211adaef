"""What protects the host from its VMs, without a VM: the console markers the host waits for,
the cap on a VM's console log, the free-space check, and qemu's lifetime tied to vmharness's.
(tests/test_vm_host.py does the same with real VMs.)"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from vmharness.vm import qemu as local

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
