"""A run's input and output disks, made without root and without mounting.

Input: ext2 (no journal: it is read-only in the guest) holding conditions.toml and, when the spec
names one, the test suite as suite/; built by `mke2fs -d` from a staging folder.
Output: an empty FAT32/FAT16 filesystem (`mkfs.fat`), the only thing that comes back. FAT was
chosen because it has no symlinks, device files or sparse files for a guest to abuse, and
because we read it back with our own defensive reader (fatfs.py).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import InfraError
from ..spec.models import MIN_OUTPUT_SIZE_MIB
from ..wire.guest import CONDITIONS_FILE, INPUT_LABEL, OUTPUT_LABEL, SUITE_DIR

MIN_OUTPUT_MIB = MIN_OUTPUT_SIZE_MIB  # the spec refuses less when it is read (spec/models.py)
FAT32_FROM_MIB = 256  # smaller disks are FAT16: FAT32 wants at least 65525 clusters


def make_input_disk(path: Path, conditions_toml: str, suite: Path | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="vmh-input-", dir=path.parent) as tmp:
        stage = Path(tmp) / "root"
        stage.mkdir()
        (stage / CONDITIONS_FILE).write_text(conditions_toml, encoding="utf-8")
        if suite is not None:
            if not suite.is_dir():
                raise InfraError(f"test suite folder {suite} does not exist")
            shutil.copytree(suite, stage / SUITE_DIR, symlinks=True)
        used = sum(p.stat().st_size for p in stage.rglob("*") if p.is_file() and not p.is_symlink())
        size_kib = max(4096, int(used * 1.25 / 1024) + 2048)
        _run(
            [
                "mke2fs",
                "-q",
                "-F",
                "-t",
                "ext2",
                "-L",
                INPUT_LABEL,
                "-m",
                "0",
                "-E",
                "root_owner=0:0",
                "-d",
                str(stage),
                str(path),
                f"{size_kib}k",
            ]
        )


def make_output_disk(path: Path, size_mib: int) -> None:
    if size_mib < MIN_OUTPUT_MIB:
        raise InfraError(f"output disk must be at least {MIN_OUTPUT_MIB} MiB")
    path.unlink(missing_ok=True)
    fat = ["-F", "32"] if size_mib >= FAT32_FROM_MIB else ["-F", "16"]
    if size_mib < 32:
        fat += ["-s", "1"]  # small disks need small clusters to stay a valid FAT16
    _run(["mkfs.fat", *fat, "-n", OUTPUT_LABEL, "-C", str(path), str(size_mib * 1024)])


def _run(cmd: list[str]) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise InfraError(
            f"{cmd[0]} is not installed",
            hint="sudo apt-get install e2fsprogs dosfstools (or `make setup`)",
        ) from None
    if proc.returncode != 0:
        raise InfraError(f"{' '.join(cmd[:2])} failed: {proc.stderr.strip()}")
