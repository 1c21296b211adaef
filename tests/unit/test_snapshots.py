"""The warm-boot snapshot store, without VMs: keys, publishing, failures, pruning; and the
qemu command lines a snapshot is made from and restored into."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from vmharness.vm import qemu as local
from vmharness.vm.job import VMJob
from vmharness.vm.snapshots import FAILURE_TTL_S, SnapshotStore

SHAPE = {
    "image": "/c/images/debian-12-abc/disk.qcow2",
    "image_folder": "debian-12-abc",
    "kernel": "/c/k",
    "initrd": "/c/i",
    "cmdline": "root=/dev/vda2",
    "qemu": "7.2",
    "accel": "tcg",
    "memory_mib": 512,
    "cpus": 1,
    "network": "none",
}


def made(store: SnapshotStore, shape: dict = SHAPE) -> str:
    key = store.key(shape)
    work = store.workdir(key)
    (work / "state").write_bytes(b"state")
    (work / "booted.qcow2").write_bytes(b"disk")
    (work / "console.log").write_text("booted\n")
    store.publish(key, work, shape)
    return key


def test_every_part_of_the_shape_changes_the_key(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    base = store.key(SHAPE)
    assert store.key(dict(SHAPE)) == base
    for field, other in [
        ("memory_mib", 1024),
        ("cpus", 2),
        ("network", "user"),
        ("accel", "kvm"),
        ("qemu", "8.0"),
        ("cmdline", "x"),
        ("image", "/other"),
        ("kernel", "/k2"),
    ]:
        assert store.key({**SHAPE, field: other}) != base, field


def test_publish_is_whole_and_read_only(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    key = store.key(SHAPE)
    assert store.find(key) is None
    made(store)
    snap = store.find(key)
    assert snap is not None and snap.state.read_bytes() == b"state"
    assert snap.meta()["memory_mib"] == 512 and snap.made_at() <= time.time()
    for path in snap.folder.iterdir():
        assert path.stat().st_mode & 0o222 == 0, path
    assert not list((tmp_path / "tmp").iterdir())  # nothing left half-made


def test_a_folder_without_its_state_is_not_a_snapshot(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    key = made(store)
    os.chmod(tmp_path / key, 0o755)
    (tmp_path / key / "state").unlink()
    assert store.find(key) is None


def test_a_failure_is_remembered_for_an_hour_and_a_discard_removes(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    key = made(store)
    store.discard(key, "restoring it failed: bad stream")
    assert store.find(key) is None and not (tmp_path / key).exists()
    assert store.recent_failure(key) == "restoring it failed: bad stream"
    old = time.time() - FAILURE_TTL_S - 1
    os.utime(tmp_path / f"{key}.failed", (old, old))
    assert store.recent_failure(key) is None
    made(store)  # a new snapshot clears the marker
    assert not (tmp_path / f"{key}.failed").exists()


def test_prune_removes_snapshots_of_images_that_are_gone(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    kept = made(store)
    gone = made(store, {**SHAPE, "image_folder": "debian-12-old", "image": "/old"})
    assert set(store.by_image()) == {"debian-12-abc", "debian-12-old"}
    assert store.prune({"debian-12-abc"}, dry_run=True) == [tmp_path / gone]
    assert store.find(gone) is not None  # a dry run removes nothing
    store.prune({"debian-12-abc"})
    assert store.find(gone) is None and store.find(kept) is not None


def test_the_lock_lets_one_maker_at_a_time(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    inside: list[int] = []
    overlap: list[bool] = []

    def maker(n: int) -> None:
        with store.lock("k"):
            inside.append(n)
            overlap.append(len(inside) > 1)
            time.sleep(0.05)
            inside.remove(n)

    threads = [threading.Thread(target=maker, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert overlap == [False, False, False]


def job(tmp_path: Path, **kw) -> VMJob:
    return VMJob(
        name="vmharness-0001",
        base_disk=tmp_path / "disk.qcow2",
        kernel=tmp_path / "vmlinuz",
        initrd=tmp_path / "initrd.img",
        cmdline="root=/dev/vda2",
        input_disk=tmp_path / "in.img",
        output_disk=tmp_path / "out.img",
        workdir=tmp_path,
        console_log=tmp_path / "console.log",
        **kw,
    )


def test_warm_command_has_no_run_disks_and_two_free_ports(tmp_path: Path) -> None:
    j = job(tmp_path)
    warm = local._warm_command(j, "tcg", tmp_path / "o.qcow2", tmp_path / "q.sock")
    text = " ".join(warm)
    assert "in.img" not in text and "out.img" not in text
    assert text.count("pcie-root-port") == 2
    assert local.SNAPSHOT_FLAG in warm[warm.index("-append") + 1].split()
    cold = " ".join(local.qemu_command(j, "tcg", tmp_path / "o.qcow2", tmp_path / "q.sock"))
    assert "in.img" in cold and "out.img" in cold and local.SNAPSHOT_FLAG not in cold


def test_software_emulation_gets_no_fast_string_copies_nor_random_addresses(tmp_path: Path) -> None:
    # TCG runs `rep movsb` a byte a step; a guest told of ERMS/FSRM uses it for every page.
    cmd = local.qemu_command(job(tmp_path), "tcg", tmp_path / "o.qcow2", tmp_path / "q.sock")
    cpu = cmd[cmd.index("-cpu") + 1].split(",")
    assert cpu[0] == "max" and {"erms=off", "fsrm=off"} <= set(cpu[1:])
    kvm = local.qemu_command(job(tmp_path), "kvm", tmp_path / "o.qcow2", tmp_path / "q.sock")
    assert kvm[kvm.index("-cpu") + 1] == "host"
    # nor address-space randomisation (each process would have its libraries translated anew)
    assert "norandmaps" in cmd[cmd.index("-append") + 1].split()
    assert "norandmaps" not in kvm[kvm.index("-append") + 1].split()


def test_a_snapshot_is_never_restored_under_other_emulation_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "disk.qcow2").write_bytes(b"")
    store = SnapshotStore(tmp_path / "snaps")
    keys = {store.key(local._snapshot_shape(job(tmp_path), "tcg"))}
    monkeypatch.setattr(local, "TCG_CPU", "max")
    keys.add(store.key(local._snapshot_shape(job(tmp_path), "tcg")))
    monkeypatch.setattr(local, "TCG_KERNEL_FLAGS", "")
    keys.add(store.key(local._snapshot_shape(job(tmp_path), "tcg")))
    assert len(keys) == 3


def test_commas_in_paths_do_not_split_qemu_options(tmp_path: Path) -> None:
    odd = tmp_path / "a,b"
    cmd = local.qemu_command(job(odd), "tcg", odd / "o.qcow2", tmp_path / "q.sock")
    drives = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-drive"]
    assert all("a,,b" in d for d in drives), drives


def test_runs_that_waited_for_a_failed_maker_do_not_try_again(tmp_path: Path, monkeypatch) -> None:
    attempts: list[str] = []

    def failing_make(procs, job, accel, store, key, shape):
        attempts.append(key)
        raise local._SnapshotFailed("the agent was not ready after 300s")

    monkeypatch.setattr(local, "_make_snapshot", failing_make)
    monkeypatch.setattr(local, "qemu_version", lambda: "7.2")
    (tmp_path / "disk.qcow2").write_bytes(b"")
    store = SnapshotStore(tmp_path / "snaps")
    j = job(tmp_path)
    shape = local._snapshot_shape(j, "tcg")
    key = store.key(shape)
    for _ in range(3):  # the first makes and fails; the others find its failure under the lock
        with pytest.raises(local._SnapshotFailed):
            local._snapshot_for(local.VMProcesses(), j, "tcg", store, key, shape)
    assert attempts == [key]
    assert "not ready" in (store.recent_failure(key) or "")


def test_an_unusable_store_means_a_boot_not_a_crash(tmp_path: Path, monkeypatch) -> None:
    booted: list[VMJob] = []

    def fake_boot(procs, j, accel):
        booted.append(j)
        return local.VMOutcome(ended="poweroff", seconds=1.0, accelerator=accel)

    monkeypatch.setattr(local, "_run_booting", fake_boot)
    monkeypatch.setattr(local, "qemu_version", lambda: "7.2")
    (tmp_path / "disk.qcow2").write_bytes(b"")
    (tmp_path / "not-a-folder").write_text("")
    outcome = local.LocalVMs("tcg")(job(tmp_path, snapshot_store=tmp_path / "not-a-folder"))
    assert len(booted) == 1
    assert outcome.boot.startswith("direct kernel boot (no snapshot: the snapshot store")


def test_a_qmp_error_while_saving_is_a_failed_snapshot(tmp_path: Path, monkeypatch) -> None:
    """Whatever goes wrong while making it (here: QMP refuses a command), the run can boot."""
    import subprocess

    class RefusingQMP:
        def cmd(self, name, **kw):
            raise RuntimeError(f"{name}: refused")

    monkeypatch.setattr(local, "_create_overlay", lambda base, overlay: overlay.write_bytes(b""))
    monkeypatch.setattr(
        local.VMProcesses, "start", lambda self, cmd, work, sock, **kw: subprocess.Popen(["true"])
    )
    monkeypatch.setattr(local, "_wait_for_marker", lambda proc, console, *args, **kw: None)
    monkeypatch.setattr(local, "_connect", lambda sock, proc, error=None: RefusingQMP())
    store = SnapshotStore(tmp_path / "snaps")
    with pytest.raises(local._SnapshotFailed, match="stop: refused"):
        local._make_snapshot(local.VMProcesses(), job(tmp_path), "tcg", store, "k", SHAPE)
    assert store.find("k") is None
    assert not list((store.root / "tmp").iterdir())  # its work folder is gone


def test_no_vm_starts_once_stopping_has_begun(tmp_path: Path, monkeypatch) -> None:
    procs = local.VMProcesses()
    procs.stop_all()
    with pytest.raises(local.VMInterrupted):
        procs.start(
            ["qemu-system-x86_64", "-name", "vmharness-0001"],
            tmp_path,
            tmp_path / "q.sock",
            console=tmp_path / "console.log",
        )
    assert not procs._running


def test_the_run_says_how_many_snapshots_it_will_make(tmp_path: Path, monkeypatch) -> None:
    from vmharness.engine.attempt import ImageRef
    from vmharness.engine.local import _snapshot_plan
    from vmharness.spec import PackageSet, Platform, Run, Source, VMSettings
    from vmharness.spec import TestSettings as Test

    monkeypatch.setattr(local, "qemu_version", lambda: "7.2")
    (tmp_path / "disk.qcow2").write_bytes(b"")
    built = ImageRef(
        disk=tmp_path / "disk.qcow2",
        kernel=tmp_path / "k",
        initrd=None,
        cmdline="root=/dev/vda2",
        apt_source="",
        suite="",
        label="debian-12",
    )
    given = ImageRef.given(tmp_path / "disk.qcow2")

    def run(n: int, platform: str, memory: int) -> Run:
        return Run(
            id=f"{n:04d}",
            platform=Platform(platform, recipe="debian-12"),
            source=Source("s"),
            package_set=PackageSet(f"p{n}"),
            test=Test(command="true", timeout_s=60, format="exit-code"),
            vm=VMSettings(memory_mib=memory, cpus=1, network="none", wall_timeout_s=300),
        )

    runs = [run(1, "a", 512), run(2, "a", 512), run(3, "a", 1024), run(4, "mine", 512)]
    images = {"a": built, "mine": given}
    store = SnapshotStore(tmp_path / "snaps")
    text = _snapshot_plan(runs, images, "tcg", store)
    assert text.startswith("VMs start from 2 warm-boot snapshot(s); 2 not made yet")
    assert "1 run(s) on given images boot" in text
    made(
        store,
        local.snapshot_shape(
            built.disk,
            built.kernel,
            None,
            built.cmdline,
            "tcg",
            memory_mib=512,
            cpus=1,
            network="none",
        ),
    )
    assert "; 1 not made yet" in _snapshot_plan(runs, images, "tcg", store)
