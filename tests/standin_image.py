"""A stand-in for a distribution's cloud image: a Debian system that vmharness did not build.

Made with mmdebstrap from the mirror of the debian-12 recipe, with the distribution's kernel and
its default (big, generic) initramfs, a DOS partition table with one ext4 root found by
UUID in /etc/fstab and on the kernel command line, EXTLINUX as its bootloader (installed by
libguestfs, in its appliance: nothing is mounted here), no serial console on its command line,
an empty machine-id (as cloud images ship) and no vmharness agent. A qcow2, as clouds ship them.

Built once and kept in the image cache folder (`test-inputs/`), keyed on what this file makes.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

ROOT_MIB = 1536
MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
PACKAGES = (
    "linux-image-cloud-amd64",
    "systemd-sysv",
    "udev",
    "python3",
    "ca-certificates",
    "mount",
    "kmod",
)


# Bump when what _build makes changes: the cached stand-in is then made again.
STANDIN_VERSION = 1


def standin_key() -> str:
    what = f"{STANDIN_VERSION} {' '.join(PACKAGES)} {ROOT_MIB}"
    return hashlib.sha256(what.encode()).hexdigest()[:12]


def debian_standin(cache_root: Path, mirror: str, say=print) -> Path:
    """The stand-in image (a qcow2 file), made if missing. Needs root, mmdebstrap, libguestfs."""
    folder = cache_root / "test-inputs"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"debian-12-extlinux-{standin_key()}.qcow2"
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.exists():
            return final
        with tempfile.TemporaryDirectory(prefix="standin-", dir=folder) as tmp:
            work = Path(tmp)
            _build(work, mirror, say)
            os.replace(work / "disk.qcow2", final)
    return final


def _run(cmd: list[str], **kw) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr[-3000:]}")


def _build(work: Path, mirror: str, say) -> None:
    tree = work / "tree"
    say(f"stand-in image: mmdebstrap bookworm from {mirror}")
    _run(
        [
            "mmdebstrap",
            "--mode=root",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "bookworm",
            str(tree),
            mirror,
        ]
    )
    root_uuid = str(uuid.uuid4())
    (tree / "etc" / "fstab").write_text(f"UUID={root_uuid} / ext4 errors=remount-ro 0 1\n")
    (tree / "etc" / "hostname").write_text("standin\n")
    (tree / "etc" / "machine-id").write_text("")  # first boot, as a cloud image ships
    version = sorted(p.name.removeprefix("vmlinuz-") for p in (tree / "boot").glob("vmlinuz-*"))[-1]
    boot_cfg = tree / "boot" / "extlinux" / "extlinux.conf"
    boot_cfg.parent.mkdir(parents=True)
    boot_cfg.write_text(
        "DEFAULT debian\nPROMPT 0\nTIMEOUT 1\n\nLABEL debian\n"
        f"  LINUX /boot/vmlinuz-{version}\n  INITRD /boot/initrd.img-{version}\n"
        f"  APPEND root=UUID={root_uuid} ro quiet\n"
    )
    raw = work / "disk.raw"
    start = 2048
    with open(raw, "wb") as f:
        f.truncate((1 + ROOT_MIB) * 1024 * 1024)
    _run(["sfdisk", "-q", str(raw)], input=f"label: dos\nstart={start}, type=83, bootable\n")
    say("stand-in image: ext4 root into the partition (mke2fs -d)")
    _run(
        [
            "mke2fs",
            "-q",
            "-t",
            "ext4",
            "-O",
            "^64bit,^metadata_csum",  # what EXTLINUX reads on every version
            "-U",
            root_uuid,
            "-E",
            f"offset={start * 512}",
            "-d",
            str(tree),
            str(raw),
            f"{ROOT_MIB}M",
        ]
    )
    shutil.rmtree(tree)
    say("stand-in image: EXTLINUX into /boot/extlinux (guestfish) and the MBR boot code")
    env = dict(os.environ)
    env.setdefault("LIBGUESTFS_BACKEND", "direct")
    env.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
    _run(
        ["guestfish", "-a", str(raw), "run", ":", "mount", "/dev/sda1", "/"]
        + [":", "extlinux", "/boot/extlinux"],
        env=env,
    )
    with open(raw, "r+b") as f:
        f.write(MBR.read_bytes()[:440])
    _run(["qemu-img", "convert", "-c", "-O", "qcow2", str(raw), str(work / "disk.qcow2")])
