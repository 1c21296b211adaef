"""A tiny initrd for direct kernel boot: busybox, the few modules that find the root disk, and a
ten-line /init. No udev, no scripts framework: under software emulation the distribution's
initramfs costs seconds of every boot, and this path is taken by every local run.

The distribution's own initrd stays on the boot partition for disk boot (VM universe), where
robustness across hardware matters more than seconds.
"""

from __future__ import annotations

import lzma
import os
import stat
from pathlib import Path

# What must be loaded before the root disk appears (when the kernel has them as modules),
# and what the agent's output disk needs (vfat), cheaper to load here than by modprobe later.
ROOT_MODULES = ("virtio_pci", "virtio_blk", "ext4")
EXTRA_MODULES = ("vfat", "nls_cp437", "nls_utf8")

INIT_SCRIPT = """#!/bin/busybox sh
# vmharness fast initrd: load the disk drivers, mount the root, hand over to systemd.
B=/bin/busybox
$B mount -t devtmpfs devtmpfs /dev
$B mount -t proc proc /proc
for m in $($B cat /modules.order); do $B insmod /modules/$m 2>/dev/null; done
i=0
while [ ! -b {root} ] && [ $i -lt 200 ]; do $B usleep 50000; i=$((i + 1)); done
$B mount -t ext4 -o rw {root} /root || {{ echo "vmharness initrd: cannot mount {root}"; \
$B poweroff -f; }}
$B umount /proc
$B mount --move /dev /root/dev
exec $B switch_root /root /sbin/init
"""


class InitrdUnavailable(Exception):
    """The tree lacks something the fast initrd needs; the distribution's initrd is used."""


def build_fast_initrd(tree: Path, kernel_version: str, dest: Path, root_device: str) -> None:
    busybox = tree / "bin" / "busybox"
    if not busybox.is_file():
        raise InitrdUnavailable("no busybox in the image")
    moddir = tree / "lib" / "modules" / kernel_version
    deps = _modules_dep(moddir)
    builtin = _builtin(moddir)
    order: list[str] = []
    for name in ROOT_MODULES + EXTRA_MODULES:
        if name in builtin:
            continue
        if name not in deps:
            if name in EXTRA_MODULES:
                continue  # loaded on demand later instead
            raise InitrdUnavailable(f"module {name} is neither built in nor present")
        _add_with_deps(name, deps, order)
    entries: list[tuple[str, int, bytes]] = [
        ("bin", stat.S_IFDIR | 0o755, b""),
        ("dev", stat.S_IFDIR | 0o755, b""),
        ("proc", stat.S_IFDIR | 0o755, b""),
        ("root", stat.S_IFDIR | 0o755, b""),
        ("modules", stat.S_IFDIR | 0o755, b""),
        ("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes()),
        ("init", stat.S_IFREG | 0o755, INIT_SCRIPT.format(root=root_device).encode()),
    ]
    files = []
    for name in order:
        rel = deps[name][0]
        data = (moddir / rel).read_bytes()
        if rel.endswith(".xz"):
            data = lzma.decompress(data)
        elif rel.endswith(".zst"):
            raise InitrdUnavailable("zstd-compressed modules are not supported here")
        files.append(f"{name}.ko")
        entries.append((f"modules/{name}.ko", stat.S_IFREG | 0o644, data))
    entries.append(("modules.order", stat.S_IFREG | 0o644, "\n".join(files).encode() + b"\n"))
    with open(dest, "wb") as f:
        ino = 1
        # The kernel opens /dev/console before /init runs: give it a node (no root needed).
        f.write(_cpio_entry("dev/console", stat.S_IFCHR | 0o600, b"", ino, rdev=(5, 1)))
        for name, mode, data in entries:
            ino += 1
            f.write(_cpio_entry(name, mode, data, ino))
        f.write(_cpio_entry("TRAILER!!!", 0, b"", 0))


def _modules_dep(moddir: Path) -> dict[str, tuple[str, list[str]]]:
    """module name -> (relative path, names it depends on)."""
    out: dict[str, tuple[str, list[str]]] = {}
    try:
        text = (moddir / "modules.dep").read_text()
    except OSError as exc:
        raise InitrdUnavailable(f"no modules.dep: {exc}") from None
    for line in text.splitlines():
        path, _, rest = line.partition(":")
        out[_mod_name(path)] = (path, [_mod_name(d) for d in rest.split()])
    return out


def _builtin(moddir: Path) -> set[str]:
    try:
        return {_mod_name(p) for p in (moddir / "modules.builtin").read_text().split()}
    except OSError:
        return set()


def _mod_name(path: str) -> str:
    base = os.path.basename(path)
    for suffix in (".xz", ".zst", ".gz"):
        base = base.removesuffix(suffix)
    return base.removesuffix(".ko").replace("-", "_")


def _add_with_deps(name: str, deps: dict[str, tuple[str, list[str]]], order: list[str]) -> None:
    if name in order:
        return
    for dep in deps[name][1]:
        _add_with_deps(dep, deps, order)
    order.append(name)


def _cpio_entry(
    name: str, mode: int, data: bytes, ino: int, rdev: tuple[int, int] = (0, 0)
) -> bytes:
    """One entry of a "newc" cpio archive, the format the kernel unpacks."""
    raw_name = name.encode() + b"\0"
    fields = (
        ino,
        mode,
        0,
        0,
        2 if stat.S_ISDIR(mode) else 1,
        0,
        len(data),
        0,
        0,
        rdev[0],
        rdev[1],
        len(raw_name),
        0,
    )
    header = b"070701" + b"".join(b"%08X" % v for v in fields)
    out = header + raw_name
    out += b"\0" * (-len(out) % 4)
    out += data + b"\0" * (-len(data) % 4)
    return out
