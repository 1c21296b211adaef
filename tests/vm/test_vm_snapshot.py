"""Warm-boot snapshots with real VMs: made on first use, restored for the next runs (right
clock, fresh randomness, never modified), and a broken one falls back to a boot.

One private snapshot store, so the first run always makes its snapshot here. Four VMs: the
one that makes the snapshot and runs, two restored, one whose snapshot is broken.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from vmharness.engine.attempt import ImageRef, RunContext, execute
from vmharness.spec import PackageSet, Platform, Run, Source, VMSettings
from vmharness.spec import TestSettings as Test
from vmharness.vm.accel import choose_accelerator
from vmharness.vm.qemu import LocalVMs
from vmharness.vm.snapshots import SnapshotStore

pytestmark = pytest.mark.vm

# What each run reports of itself: its clock, and 16 bytes from the kernel's RNG.
COMMAND = (
    'echo "clock $(date +%s)"; echo "random $(head -c 16 /dev/urandom | od -An -tx1 '
    '| tr -d " \\n")"'
)


def make_run(n: int) -> Run:
    return Run(
        id=f"{n:04d}",
        platform=Platform("debian-12", recipe="debian-12"),
        source=Source("image"),
        package_set=PackageSet(f"run{n}"),
        test=Test(command=COMMAND, timeout_s=60, format="exit-code"),
        vm=VMSettings(memory_mib=384, cpus=1, network="none", wall_timeout_s=300),
    )


def reported(ctx: RunContext, run: Run) -> dict[str, str]:
    log = (ctx.run_dir / "runs" / run.id / "output" / "test.log").read_text()
    return dict(line.split(" ", 1) for line in log.splitlines() if " " in line)


def digest(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
        for p in sorted(folder.iterdir())
    }


@pytest.fixture(scope="module")
def warm(base_image, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("warm")
    store = tmp / "snapshots"
    ctx = RunContext(run_dir=tmp / "out", snapshot_store=store)
    image = ImageRef.from_cache(base_image)
    accel = choose_accelerator(base_image.kernel, base_image.folder.parent.parent)

    def one(n: int):
        run = make_run(n)
        t0 = time.time()
        result = execute(run, image, ctx, LocalVMs(accel))
        return run, result, t0, time.time()

    first = one(1)
    snaps = SnapshotStore(store).list()
    before = digest(snaps[0].folder) if snaps else {}
    restored = [one(2), one(3)]
    after = digest(snaps[0].folder) if snaps else {}
    return {
        "ctx": ctx,
        "store": SnapshotStore(store),
        "snaps": snaps,
        "first": first,
        "restored": restored,
        "unchanged": before == after and bool(before),
        "one": one,
    }


def test_the_first_run_makes_the_snapshot_and_passes(warm) -> None:
    _run, result, _t0, _t1 = warm["first"]
    assert result.status == "pass", result.reason
    assert result.boot.startswith("restored from snapshot"), result.boot
    assert "made for this run" in result.boot
    assert len(warm["snaps"]) == 1
    print(
        f"first run, making the snapshot: {result.duration_s:.1f}s "
        f"(snapshot {result.phases.get('snapshot', 0):.1f}s)"
    )


def test_restored_runs_pass_without_booting(warm) -> None:
    for run, result, _t0, _t1 in warm["restored"]:
        assert result.status == "pass", result.reason
        assert result.boot.startswith("restored from snapshot"), result.boot
        assert "made for this run" not in result.boot
        assert "boot" not in result.phases  # no boot for this run: a restore instead
        assert result.phases["restore"] < 30
        console = (warm["ctx"].run_dir / "runs" / run.id / "console.log").read_text()
        assert "ready for a snapshot" in console  # the boot, from the snapshot
        assert "restored from snapshot" in console and "powering off" in console
        print(f"restored run {run.id}: {result.duration_s:.1f}s")


def test_a_restored_guest_has_the_hosts_clock(warm) -> None:
    """Not the time the snapshot was taken: the RTC's, to about a second."""
    for run, _result, t0, t1 in warm["restored"]:
        clock = int(reported(warm["ctx"], run)["clock"])
        assert t0 - 3 <= clock <= t1 + 3, (clock, t0, t1)


def test_the_agent_set_the_clock_and_reseeded_the_rng(warm) -> None:
    """Said in its log: a warning there would mean it could not (and the checks above might
    pass by luck, the kernel reseeding on its own)."""
    for run, *_ in warm["restored"]:
        log = (warm["ctx"].run_dir / "runs" / run.id / "output" / "agent.log").read_text()
        assert "clock set from the RTC" in log and "kernel RNG reseeded with 64 bytes" in log
        assert "WARNING" not in log


def test_restored_guests_do_not_share_random_numbers(warm) -> None:
    values = [reported(warm["ctx"], run)["random"] for run, *_ in warm["restored"]]
    first = reported(warm["ctx"], warm["first"][0])["random"]
    assert len(set(values + [first])) == 3 and all(len(v) == 32 for v in values), values


def test_runs_never_modify_the_snapshot(warm) -> None:
    assert warm["unchanged"], "a restored run changed its snapshot's files"


def test_a_broken_snapshot_falls_back_to_a_boot_and_is_discarded(warm) -> None:
    snap = warm["snaps"][0]
    key = snap.folder.name
    state = snap.state
    state.chmod(0o644)
    data = state.read_bytes()
    state.write_bytes(data[: len(data) // 3])  # cut short: the stream cannot load
    state.chmod(0o444)
    run, result, _t0, _t1 = warm["one"](4)
    assert result.status == "pass", result.reason
    assert result.boot.startswith("direct kernel boot (no snapshot: restoring"), result.boot
    assert "boot" in result.phases
    store = warm["store"]
    assert store.find(key) is None, "the broken snapshot is still there"
    assert "restoring it failed" in (store.recent_failure(key) or "")
