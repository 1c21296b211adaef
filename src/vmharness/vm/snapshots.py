"""The store of warm-boot snapshots: VMs booted once and saved where their agent waits for a run.

Under emulation a boot costs ~11 s of the ~15 s a trivial run takes; restoring a saved VM costs
under a second. For each image and VM shape (memory, vCPUs, network, accelerator, qemu) the
local backend makes one snapshot on first use and restores it for every run (see local.py for
how). A snapshot is a folder, published whole by a rename and read-only once published:

    state         the VM's memory and devices, as a qemu migration stream
    booted.qcow2  the root disk's overlay at that moment (each run adds its own on top)
    console.log   the boot's serial console, put at the head of every run's console.log
    snapshot.json what it was made from, and when

Snapshots live beside the image cache (<cache>/snapshots/). They are as old as their image at
most: a rebuilt image, a new qemu or a changed VM shape makes a new key, and `vmharness image
prune` removes the snapshots of images that are gone.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..images.cache import remove_read_only
from ..wire.codec import read_json, write_json_atomic

# Bump when what a snapshot holds, or how it is restored, changes (2: network-ready snapshots).
SNAPSHOT_FORMAT = 2
FAILURE_TTL_S = 3600  # after a failed attempt, cold boots for this long instead of retrying
UNUSED_TTL_S = 7 * 24 * 3600  # a snapshot no run restored for this long is pruned


@dataclass(frozen=True)
class Snapshot:
    folder: Path

    @property
    def state(self) -> Path:
        return self.folder / "state"

    @property
    def overlay(self) -> Path:
        return self.folder / "booted.qcow2"

    @property
    def console(self) -> Path:
        return self.folder / "console.log"

    def meta(self) -> dict:
        return read_json(self.folder / "snapshot.json", limit=1 << 20)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())

    def made_at(self) -> float:
        try:
            return float(self.meta()["made_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return self.state.stat().st_mtime


class SnapshotStore:
    def __init__(self, root: Path):
        self.root = root

    def key(self, shape: dict) -> str:
        """The folder name for a VM shape: everything that must match for a restore to work."""
        blob = json.dumps({"format": SNAPSHOT_FORMAT, **shape}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def find(self, key: str) -> Snapshot | None:
        snap = Snapshot(self.root / key)
        return snap if (snap.folder / "snapshot.json").is_file() and snap.state.is_file() else None

    def recent_failure(self, key: str) -> str | None:
        """Why making this snapshot failed within the last hour, if it did."""
        marker = self.root / f"{key}.failed"
        with contextlib.suppress(OSError):
            if time.time() - marker.stat().st_mtime < FAILURE_TTL_S:
                return marker.read_text().strip()
        return None

    def record_failure(self, key: str, reason: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / f"{key}.failed").write_text(reason + "\n")

    def discard(self, key: str, reason: str) -> None:
        """A snapshot that could not be restored: remove it, so the next run makes a new one."""
        self._set_aside(self.root / key)
        self.record_failure(key, reason)

    def used(self, key: str) -> None:
        """Note that a run restored it now (its folder's mtime): prune keeps what is in use."""
        with contextlib.suppress(OSError):
            os.utime(self.root / key)

    def _set_aside(self, folder: Path) -> None:
        # Renamed first (atomic: no run finds half of it), removed after.
        if folder.exists():
            trash = folder.with_name(
                f"{folder.name}.discarded-{os.getpid()}-"
                f"{threading.get_ident()}-{time.monotonic_ns()}"
            )
            with contextlib.suppress(OSError):
                folder.rename(trash)
                remove_read_only(trash)

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Held while a snapshot is made, so two runs wanting the same one make it once."""
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / f"{key}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def workdir(self, key: str) -> Path:
        work = self.root / "tmp" / f"{key}-{os.getpid()}-{int(time.time())}"
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        return work

    def publish(self, key: str, work: Path, meta: dict) -> Snapshot:
        write_json_atomic(work / "snapshot.json", {**meta, "made_at": time.time()})
        for path in work.iterdir():
            path.chmod(0o444)
        final = self.root / key
        if final.exists():  # not a snapshot (find() said so): a leftover in the way
            self._set_aside(final)
        os.rename(work, final)  # atomic: a crash leaves only tmp/ leftovers, never half a snapshot
        (self.root / f"{key}.failed").unlink(missing_ok=True)
        return Snapshot(final)

    def list(self) -> list[Snapshot]:
        if not self.root.is_dir():
            return []
        return [s for d in sorted(self.root.iterdir()) if (s := self.find(d.name)) is not None]

    def by_image(self) -> dict[str, builtins.list[Snapshot]]:
        """Snapshots by the name of the image folder they were made from."""
        out: dict[str, builtins.list[Snapshot]] = {}
        for snap in self.list():
            try:
                image = str(snap.meta().get("image_folder", ""))
            except (OSError, ValueError):
                image = ""
            out.setdefault(image, []).append(snap)
        return out

    def prune(self, images_present: set[str], dry_run: bool = False) -> builtins.list[Path]:
        """Remove snapshots of images no longer in the cache or unused for a week (an old
        qemu's, a VM shape no spec asks for any more), spent failure markers and leftovers.

        Safe beside runs in other processes: a snapshot restored in the last week is kept,
        and one removed under a run's feet only makes that run boot instead."""
        removed = [
            snap.folder
            for image, snaps in self.by_image().items()
            for snap in snaps
            if image not in images_present or _age(snap.folder) > UNUSED_TTL_S
        ]
        if self.root.is_dir():
            with contextlib.suppress(OSError):
                removed += [
                    p
                    for p in self.root.iterdir()
                    if ".discarded-" in p.name
                    or (p.name.endswith(".failed") and _age(p) > FAILURE_TTL_S)
                ]
        tmp = self.root / "tmp"
        if tmp.is_dir():  # one being made holds its lock for minutes at most (boot + save)
            with contextlib.suppress(OSError):
                removed += [p for p in tmp.iterdir() if _age(p) > 3600]
        if not dry_run:
            for path in removed:
                remove_read_only(path)
        return removed


def _age(path: Path) -> float:
    """Seconds since `path` last changed; 0 if it is gone (another process just removed it)."""
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0
