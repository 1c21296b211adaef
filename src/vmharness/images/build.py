"""Building a base image from a recipe: mmdebstrap a tree, customize it, assemble a disk.

The disk is assembled without loop devices and without mounting anything: a DOS partition
table (sfdisk on a file), a FAT boot partition with SYSLINUX (mtools, `syslinux --offset`) so
the disk boots under plain SeaBIOS (HTCondor's VM universe cannot pass a kernel), and an ext4
root made by `mke2fs -d` straight into the disk at its offset. The kernel and initrd are also
kept beside the disk for direct kernel boot, the fast local path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import InfraError
from .certs import HostCredentials
from .initrd import InitrdUnavailable, build_fast_initrd
from .recipe import Recipe

SECTOR = 512
BOOT_START_MIB = 1
BOOT_SIZE_MIB = 48
ROOT_DEVICE = "/dev/vda2"  # the base disk is always the first virtio disk
# Quiet, no fsck, panic ends the VM at once (-no-reboot), no security mitigations to emulate.
# What every vmharness guest's kernel gets after its root= (imported images too, images/imports.py)
KERNEL_FLAGS = (
    "console=ttyS0 quiet loglevel=3 panic=-1 fsck.mode=skip "
    "systemd.show_status=0 mitigations=off "
    # Skip what costs time under emulation and means nothing in a test VM: clock
    # calibration, crypto self-tests, PS/2 probing, the audit subsystem.
    "tsc=reliable no_timer_check cryptomgr.notests i8042.noaux i8042.nopnp audit=0"
)
KERNEL_CMDLINE = f"root={ROOT_DEVICE} rw {KERNEL_FLAGS}"
# The always-present packages: the agent needs python3; networkd is in systemd; the CA store.
BASE_PACKAGES = ("systemd-sysv", "udev", "kmod", "python3", "ca-certificates", "busybox-static")
# The agent runs apt under eatmydata: no fsync in a throw-away guest (as autopkgtest does).
FAST_APT_PACKAGES = ("eatmydata",)
# Boot-time units that do nothing for a one-shot test VM but cost seconds under emulation.
MASKED_UNITS = (
    # no logins on a test VM (debug mode starts serial-getty@ttyS0 by hand)
    "getty.target",
    "getty-static.service",
    # kernel interfaces and helpers nothing in a test run needs at boot
    "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount",
    "dev-hugepages.mount",
    "dev-mqueue.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-fs-fuse-connections.mount",
    "sys-kernel-config.mount",
    "modprobe@configfs.service",
    "modprobe@dm_mod.service",
    "modprobe@fuse.service",
    "modprobe@loop.service",
    "modprobe@drm.service",
    "modprobe@efi_pstore.service",
    "systemd-pstore.service",
    "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service",
    # periodic maintenance that a throw-away VM never lives long enough for
    "e2scrub_reap.service",
    "e2scrub_all.timer",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "fstrim.timer",
    "dpkg-db-backup.timer",
    "man-db.timer",
    "systemd-timesyncd.service",
    "systemd-networkd-wait-online.service",
    "systemd-journal-flush.service",
    "systemd-random-seed.service",
    "systemd-sysusers.service",
    # udev: coldplugging every device costs ~10 s under emulation and a test VM's devices are
    # known. The agent unmasks and starts it for runs that install packages or use the network.
    "systemd-udevd.service",
    "systemd-udev-trigger.service",
    "systemd-udevd-kernel.socket",
    "systemd-udevd-control.socket",
    "systemd-udev-settle.service",
    # nothing to load or remount: the root is mounted rw by the initrd, modules load on demand
    "systemd-modules-load.service",
    "kmod-static-nodes.service",
    "systemd-remount-fs.service",
)
# Initramfs with only what finds the root disk: a 1 MB initrd boots much faster under TCG.
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "virtio_scsi")
REQUIRED_TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "sfdisk": "fdisk",
    "mkfs.fat": "dosfstools",
    "mcopy": "mtools",
    "syslinux": "syslinux",
    "mke2fs": "e2fsprogs",
    "qemu-img": "qemu-utils",
}
INITRD_FORMAT = 2  # bump when initrd.py changes what it builds
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
# systemd-networkd's configuration for qemu's user network: the agent starts networkd for the
# runs that ask for a network (imported images get it too).
NETWORK_CONFIG = (
    "etc/systemd/network/80-vmharness.network",
    "[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\n",
)
# Where the agent, its unit and the test CA go in every guest.
AGENT_DIR = "usr/local/sbin"
UNIT_DIR = "etc/systemd/system"
DEBIAN_CA_DIR = "usr/local/share/ca-certificates"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuiltFiles:
    disk: Path
    kernel: Path
    initrd: Path
    kernel_version: str


class MirrorUnreachable(InfraError):
    """The recipe's mirror did not answer; nothing was built or changed."""


def check_tools() -> None:
    missing = {t: p for t, p in REQUIRED_TOOLS.items() if not shutil.which(t)}
    if not SYSLINUX_MBR.exists():
        missing["mbr.bin"] = "syslinux-common"
    if missing:
        raise InfraError(
            f"image build needs {', '.join(sorted(missing))}",
            hint=f"install them: sudo apt-get install {' '.join(sorted(set(missing.values())))}"
            " (or run `make setup`)",
        )
    if os.geteuid() != 0:
        raise InfraError(
            "building an image needs root (mmdebstrap keeps file ownership)",
            hint="run it with sudo, or use `make demo` which does",
        )


def check_mirror(recipe: Recipe, timeout_s: float = 15) -> None:
    """Fail early and clearly when the mirror cannot be reached, before touching anything."""
    if recipe.mirror.startswith("file://"):
        path = Path(recipe.mirror.removeprefix("file://")) / "dists" / recipe.suite
        if not path.is_dir():
            raise MirrorUnreachable(f"mirror {recipe.mirror} has no dists/{recipe.suite}")
        return
    url = f"{recipe.mirror.rstrip('/')}/dists/{recipe.suite}/InRelease"
    try:
        req = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(req, timeout=timeout_s):
            pass
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MirrorUnreachable(
            f"Debian mirror not reachable: {url}: {reason}",
            hint="check the network or set `mirror:` in a recipe file to a reachable mirror; "
            "the image cache was not touched",
        ) from None


def build(
    recipe: Recipe,
    creds: HostCredentials,
    workdir: Path,
    agent_files: dict[str, bytes],
    progress: Progress,
) -> BuiltFiles:
    """Build the image's files in `workdir` (a fresh private folder). Returns what was made."""
    tree = workdir / "tree"
    overlay = workdir / "overlay"
    _write_overlay(overlay, recipe, creds, agent_files)
    hook = workdir / "customize.sh"
    hook.write_text(_customize_script(overlay, with_ca=creds.ca_pem is not None))
    hook.chmod(0o755)
    packages = sorted({recipe.kernel, *BASE_PACKAGES, *FAST_APT_PACKAGES, *recipe.packages})
    cmd = [
        "mmdebstrap",
        "--mode=root",
        "--variant=minbase",
        "--format=directory",
        f"--components={','.join(recipe.components)}",
        f"--include={','.join(packages)}",
        # Docs, man pages and translations are dead weight in a test VM.
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-exclude=/usr/share/info/*",
        "--dpkgopt=path-include=/usr/share/locale/locale.alias",
        # Both kept in the image (mmdebstrap writes them to its apt.conf.d and dpkg.cfg.d):
        # no translations to download and parse, and no fsync per unpacked file.
        '--aptopt=Acquire::Languages "none"',
        "--dpkgopt=force-unsafe-io",
        # The package lists and apt's binary caches stay in the image (the customize hook
        # drops the downloaded .debs and rebuilds the caches): a run on the image's own
        # repositories revalidates them (If-Modified-Since) instead of fetching and parsing
        # them again, and still sees what was published since.
        "--skip=cleanup/apt",
        f"--setup-hook={_initramfs_setup_hook()}",
        f'--customize-hook={hook} "$1"',
        recipe.suite,
        str(tree),
        recipe.mirror,
    ]
    progress(f"mmdebstrap {recipe.suite} from {recipe.mirror} ({len(packages)} packages + deps)")
    _run_logged(cmd, workdir / "mmdebstrap.log", progress)
    # A set machine-id (mmdebstrap empties it last): an empty one means "first boot", and
    # systemd then applies every unit preset, seconds under emulation. Test VMs are clones.
    (tree / "etc" / "machine-id").write_text(os.urandom(16).hex() + "\n")
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise InfraError(f"the build produced no kernel (is {recipe.kernel} a kernel package?)")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    kernel, initrd = workdir / "vmlinuz", workdir / "initrd.img"
    shutil.copy2(kernels[-1], kernel)
    distro_initrd = workdir / "initrd-distro.img"
    shutil.copy2(tree / "boot" / f"initrd.img-{version}", distro_initrd)
    try:  # the direct-boot initrd; the distribution's one goes on the boot partition
        build_fast_initrd(tree, version, initrd, ROOT_DEVICE)
    except InitrdUnavailable as exc:
        progress(f"fast initrd not possible ({exc}); using the distribution's")
        shutil.copy2(distro_initrd, initrd)
    progress("assembling the disk (partitions, SYSLINUX, ext4 root) without mounting")
    raw = workdir / "disk.raw"
    _assemble(raw, tree, kernel, distro_initrd, recipe.disk_size_mib)
    distro_initrd.unlink()
    shutil.rmtree(tree)
    progress("compressing the disk into qcow2")
    disk = workdir / "disk.qcow2"
    to_qcow2(raw, disk)
    raw.unlink()
    return BuiltFiles(disk=disk, kernel=kernel, initrd=initrd, kernel_version=version)


def _initramfs_setup_hook() -> str:
    # Runs before any package is installed, so the kernel's postinst builds the small initrd
    # once, instead of building the big default one and then again.
    conf = "MODULES=list\\nCOMPRESS=zstd\\n"
    mods = "\\n".join(INITRAMFS_MODULES) + "\\n"
    return (
        'mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/usr/share/initramfs-tools/modules.d" && '
        f'printf "{conf}" > "$1/etc/initramfs-tools/conf.d/vmharness.conf" && '
        f'printf "{mods}" > "$1/usr/share/initramfs-tools/modules.d/vmharness.conf"'
    )


def guest_identity(
    hostname: str, creds: HostCredentials, agent_files: dict[str, bytes], image_conf: str
) -> dict[str, tuple[bytes, int]]:
    """What makes any vmharness guest one, built or imported: path (relative to the root) ->
    (content, mode). The fixed hostname, the host certificate (and the test CA), the agent and
    its unit, and /etc/vmharness/image.conf (`image_conf`: its key=value lines)."""
    files: dict[str, tuple[bytes, int]] = {}

    def put(rel: str, data: bytes | str, mode: int = 0o644) -> None:
        files[rel] = (data.encode() if isinstance(data, str) else data, mode)

    short = hostname.split(".")[0]
    put("etc/hostname", short + "\n")
    # The fixed name resolves only inside the guest: nothing outside knows it.
    put(
        "etc/hosts",
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname} {short}\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n",
    )
    put("etc/vmharness/hostcert.pem", creds.cert_pem)
    put("etc/vmharness/hostkey.pem", creds.key_pem, 0o600)
    # Where grid software (the OSG's first users) looks for them.
    put("etc/grid-security/hostcert.pem", creds.cert_pem)
    put("etc/grid-security/hostkey.pem", creds.key_pem, 0o400)
    if creds.ca_pem is not None:
        put(f"{DEBIAN_CA_DIR}/vmharness-test-ca.crt", creds.ca_pem)
        put("etc/vmharness/ca.pem", creds.ca_pem)
    put("etc/vmharness/image.conf", image_conf)
    for name, data in agent_files.items():
        if name.endswith(".service"):
            put(f"{UNIT_DIR}/{name}", data)
        else:
            put(f"{AGENT_DIR}/{name}", data, 0o755)
    return files


def _write_overlay(
    root: Path, recipe: Recipe, creds: HostCredentials, agent_files: dict[str, bytes]
) -> None:
    def put(rel: str, data: bytes | str, mode: int = 0o644) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        path.chmod(mode)

    image_conf = f"hostname={recipe.hostname}\nrecipe={recipe.name}\n"
    for rel, (data, mode) in guest_identity(
        recipe.hostname, creds, agent_files, image_conf
    ).items():
        put(rel, data, mode)
    # Empty: the kernel mounts the root rw (cmdline), and no fstab line means systemd does not
    # wait for udev to announce the root device, seconds under emulation.
    put("etc/fstab", "# root is mounted by the kernel (root= rw on the command line)\n")
    # The journal stays in memory; the agent exports it to the output disk as journal.log.
    put("etc/systemd/journald.conf.d/vmharness.conf", "[Journal]\nStorage=volatile\n")
    put("etc/resolv.conf", "nameserver 10.0.2.3\n")  # qemu user-mode NAT's resolver
    put(*NETWORK_CONFIG)


def _customize_script(overlay: Path, *, with_ca: bool) -> str:
    lines = [
        "#!/bin/sh",
        "set -eu",
        'root="$1"',
        f'cp -a "{overlay}/." "$root/"',
        # networkd is started by the agent only for runs that ask for a network.
        'chroot "$root" systemctl enable --quiet vmharness-agent.service',
        f'chroot "$root" systemctl mask --quiet {" ".join(MASKED_UNITS)}',
        # A test VM has no password: root logs in on the console in debug mode.
        'chroot "$root" passwd -d root >/dev/null',
        # systemd runs a dozen generators at every boot (crypt, verity, gpt-auto, sysv...):
        # seconds under emulation for devices a test VM does not have. /dev/null masks them.
        'mkdir -p "$root/etc/systemd/system-generators"',
        'for g in "$root"/lib/systemd/system-generators/* '
        '"$root"/usr/lib/systemd/system-generators/*; do '
        '[ -e "$g" ] && ln -sf /dev/null "$root/etc/systemd/system-generators/${g##*/}"; done',
    ]
    if with_ca:
        lines.append('chroot "$root" update-ca-certificates >/dev/null')
    lines += [
        'chroot "$root" apt-get clean',  # the .debs of the build (and the stale caches)
        'chroot "$root" apt-cache gencaches >/dev/null',  # pkgcache.bin and srcpkgcache.bin
    ]
    return "\n".join(lines) + "\n"


def _run_logged(cmd: list[str], log: Path, progress: Progress) -> None:
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if line.startswith("I: "):
                progress(line[3:].strip())
        code = proc.wait()
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise InfraError(f"{cmd[0]} failed with exit code {code}:\n{tail}", hint=f"full log: {log}")


def _check(cmd: list[str], **kwargs: object) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise InfraError(f"{' '.join(cmd)} failed: {proc.stderr.strip() or proc.stdout.strip()}")


def _assemble(raw: Path, tree: Path, kernel: Path, initrd: Path, root_mib: int) -> None:
    boot_start = BOOT_START_MIB * 1024 * 1024 // SECTOR
    boot_sectors = BOOT_SIZE_MIB * 1024 * 1024 // SECTOR
    root_start = boot_start + boot_sectors
    total_mib = BOOT_START_MIB + BOOT_SIZE_MIB + root_mib
    with open(raw, "wb") as f:
        f.truncate(total_mib * 1024 * 1024)
    table = (
        f"label: dos\nstart={boot_start}, size={boot_sectors}, type=c, bootable\n"
        f"start={root_start}, type=83\n"
    )
    _check(["sfdisk", "-q", str(raw)], input=table)
    boot_offset = boot_start * SECTOR
    _check(
        [
            "mkfs.fat",
            "-F",
            "16",
            "-n",
            "VMHBOOT",
            "--offset",
            str(boot_start),
            str(raw),
            str(BOOT_SIZE_MIB * 1024),
        ]
    )
    cfg = raw.parent / "syslinux.cfg"
    cfg.write_text(
        "DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL /vmlinuz\n"
        f"  INITRD /initrd.img\n  APPEND {KERNEL_CMDLINE}\n"
    )
    _check(["mcopy", "-i", f"{raw}@@{boot_offset}", str(kernel), str(cfg), "::/"])
    _check(["mcopy", "-i", f"{raw}@@{boot_offset}", str(initrd), "::/initrd.img"])
    _check(["syslinux", "--offset", str(boot_offset), "--install", str(raw)])
    with open(raw, "r+b") as f:  # SYSLINUX's MBR code, keeping the partition table after it
        f.write(SYSLINUX_MBR.read_bytes()[:440])
    _check(
        [
            "mke2fs",
            "-q",
            "-t",
            "ext4",
            "-L",
            "vmhroot",
            "-E",
            f"offset={root_start * SECTOR}",
            "-d",
            str(tree),
            str(raw),
            f"{root_mib}M",
        ]
    )


def to_qcow2(raw: Path, disk: Path) -> None:
    """A compressed qcow2 of a disk (raw, or a qcow2 with its backing files: flattened)."""
    # zstd compresses as well as zlib at a fraction of the time.
    base = ["qemu-img", "convert", "-c", "-O", "qcow2"]
    proc = subprocess.run(
        base + ["-o", "compression_type=zstd", str(raw), str(disk)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        _check(base + [str(raw), str(disk)])


def agent_files() -> dict[str, bytes]:
    folder = resources.files("vmharness.guest")
    return {
        name: (folder / name).read_bytes()
        for name in ("vmharness-agent", "vmharness-agent.service")
    }
