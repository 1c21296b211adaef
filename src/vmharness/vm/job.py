"""What every backend is given and gives back: one VM job in, one outcome out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class VMJob:
    """One VM to run: a read-only base image plus the run's two small disks."""

    name: str
    base_disk: Path  # qcow2, never written: the backend puts an overlay on top
    kernel: Path | None  # direct kernel boot when set (local fast path); else boot from disk
    initrd: Path | None
    cmdline: str
    input_disk: Path
    output_disk: Path
    workdir: Path  # the run's scratch folder: overlay, sockets
    console_log: Path
    memory_mib: int = 1024
    cpus: int = 1
    network: str = "none"  # none | user
    wall_timeout_s: int = 1800
    # Where warm-boot snapshots are kept; set to restore the VM from one instead of booting it
    # (needs a kernel: a snapshot is made by a direct kernel boot).
    snapshot_store: Path | None = None


@dataclass
class VMOutcome:
    ended: str  # poweroff | timeout | error
    seconds: float
    accelerator: str
    reason: str = ""
    exit_code: int | None = None
    phases: dict[str, float] = field(default_factory=dict)
    host: str = ""
    boot: str = ""  # how the VM started: restored from a snapshot, or which way it booted
