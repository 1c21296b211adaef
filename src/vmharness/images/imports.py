"""Bring your own image: a bootable disk of another distribution made into a vmharness base image.

The user's file is never written: the work is done on a qcow2 overlay whose backing file is
the user's (opened read-only), then flattened into the new image. What goes in is what makes a
built image a vmharness guest (build.guest_identity: the fixed hostname, the host certificate
and the test CA, the agent and its unit), with the unit's ExecStart on the guest's own Python,
plus: the serial console on the image's own bootloader's command line, cloud-init switched
off (vmharness gives it no data source to wait for), a machine-id where the image has none
(else every run would be a first boot), and an SELinux relabel where the image uses SELinux.

The tool is libguestfs (`guestfish`, Debian's libguestfs-tools): made for offline changes to
disk images, it reads what the distributions use (LVM, XFS, btrfs, GPT) without root, and runs
the guest's own programs (update-grub, grubby, update-ca-trust, setfiles) in a small appliance
VM. One appliance does all of it (guestfish --listen; every step is a `--remote` call), since
each start costs some 20 s under emulation. Before that appliance starts, the file is checked
here: a disk image (qcow2 or raw), with a partition table.

Both ways vmharness boots then work: the image's own bootloader (plain disk under SeaBIOS, as
HTCondor's VM universe does) and, for local runs, its own kernel and initrd (copied out beside
the disk) booted directly with the root= the image uses, from which warm-boot snapshots are
made where the image's kernel sees hot-plugged disks (qemu.py falls back to a boot otherwise).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InfraError, SpecError
from . import build as builder
from .certs import HostCredentials

IMPORT_FORMAT = 3  # bump when what an import puts into an image changes
MIN_PYTHON = (3, 6)
QCOW2_MAGIC = b"QFI\xfb"
# Other disk formats qemu reads but that vmharness does not take as they are.
OTHER_FORMATS = {b"KDMV": "vmdk", b"<<< ": "vdi", b"vhdxfile": "vhdx", b"conectix": "vpc"}
SECTOR = 512
HEAD_SECTORS = 34  # the MBR, the GPT header and its first entries
# Interpreters the agent can run on, in the order they are tried: the distribution's
# python3, Enterprise Linux 8's platform-python, then any python3.N, newest first.
PYTHON_FIRST = ("/usr/bin/python3", "/usr/libexec/platform-python")
PYTHON_VERSIONED = re.compile(r"^python3\.(\d+)$")
SYSTEMD_PATHS = ("/usr/lib/systemd/systemd", "/lib/systemd/systemd")
NEEDED_TOOLS = {
    "blkid": ("/usr/sbin/blkid", "/sbin/blkid", "/usr/bin/blkid", "/bin/blkid"),
    "mount": ("/usr/bin/mount", "/bin/mount", "/usr/sbin/mount", "/sbin/mount"),
}
SERIAL_CONSOLE = "console=ttyS0,115200"
# Kernel arguments of the image's own command line that direct kernel boot keeps: how the
# initramfs finds and mounts the root (LVM, RAID, LUKS, btrfs subvolumes) and the security
# and naming choices the system was made with. Everything else (consoles, splash, quiet,
# crashkernel...) is replaced by vmharness's own flags.
KEPT_ARGS = (
    "rootflags=",
    "rootfstype=",
    "rd.lvm",
    "rd.md",
    "rd.dm",
    "rd.luks",
    "rd.auto",
    "selinux=",
    "enforcing=",
    "security=",
    "lsm=",
    "net.ifnames=",
    "biosdevname=",
    "systemd.unified_cgroup_hierarchy=",
)
BOOT_CONFIGS = (
    "/boot/grub2/grub.cfg",
    "/boot/grub/grub.cfg",
    "/boot/extlinux/extlinux.conf",
    "/boot/syslinux/syslinux.cfg",
    "/boot/syslinux.cfg",
    "/extlinux.conf",
    "/syslinux.cfg",
    "/boot/grub2/grubenv",
    "/boot/grub/grubenv",
    "/etc/kernel/cmdline",
)
BLS_DIR = "/boot/loader/entries"
# The system CA bundles OpenSSL (and Python's ssl) read: Debian and Ubuntu, Enterprise Linux
# and Fedora, SUSE. The test CA is appended to each there is, and put where each
# distribution's own tool rebuilds them from (Debian's folder is in build.guest_identity).
CA_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/ca-bundle.pem",
)
CA_BUNDLE_LIMIT = 16 << 20
EL_ANCHORS = "/etc/pki/ca-trust/source/anchors"
READ_LIMIT = 1 << 20  # bytes of any one text file read from the guest
TOOL_HINT = (
    "install libguestfs: sudo apt-get install --no-install-recommends libguestfs-tools "
    "linux-image-amd64 (its appliance boots the host's kernel; `make setup` does it)"
)

Progress = Callable[[str], None]


class ImageRefused(SpecError):
    """The file cannot be made a vmharness image; the message names the file and what lacks."""

    def __init__(self, path: Path, problem: str, *, hint: str | None = None) -> None:
        super().__init__(
            f"cannot import this image: {problem}",
            file=path,
            hint=hint or "give a bootable qcow2 or raw disk of a systemd-based Linux",
        )


# -- the file, before anything starts ---------------------------------------------------------
def sniff_format(path: Path) -> str:
    """'qcow2' or 'raw' (checked further by partition_table); ImageRefused otherwise."""
    try:
        with open(path, "rb") as f:
            head = f.read(SECTOR * HEAD_SECTORS)
    except OSError as exc:
        raise ImageRefused(path, f"cannot read it: {exc.strerror or exc}") from None
    if head.startswith(QCOW2_MAGIC):
        return "qcow2"
    for magic, fmt in OTHER_FORMATS.items():
        if head.startswith(magic):
            raise ImageRefused(
                path,
                f"it is a {fmt} disk; vmharness takes qcow2 or raw",
                hint=f"convert it: qemu-img convert -O qcow2 {shlex.quote(str(path))} disk.qcow2",
            )
    partition_table(head, path)
    return "raw"


def partition_table(head: bytes, path: Path) -> str:
    """'dos' or 'gpt' from the first sectors of a disk; ImageRefused if there is none."""
    if len(head) < 2 * SECTOR or head[510:512] != b"\x55\xaa":
        raise ImageRefused(
            path,
            "it is not a disk image: neither a qcow2 file nor a disk with a partition table "
            "(no boot signature in its first sector)",
        )
    if head[SECTOR : SECTOR + 8] == b"EFI PART":
        return "gpt"
    types = [head[446 + 16 * n + 4] for n in range(4)]
    if all(t == 0 for t in types):
        raise ImageRefused(
            path,
            "its partition table is empty or unreadable (a bare filesystem cannot boot from "
            "its own disk)",
        )
    if 0xEE in types:
        raise ImageRefused(path, "its protective MBR announces a GPT that is not there")
    return "dos"


def disk_head(path: Path, fmt: str, workdir: Path) -> bytes:
    """The first sectors of the disk as the guest sees it (through qcow2, for one)."""
    if fmt == "raw":
        with open(path, "rb") as f:
            return f.read(SECTOR * HEAD_SECTORS)
    out = workdir / "head.raw"
    proc = subprocess.run(
        ["qemu-img", "dd", "-f", fmt, "-O", "raw", f"bs={SECTOR}", f"count={HEAD_SECTORS}"]
        + [f"if={path}", f"of={out}"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise ImageRefused(path, f"qemu-img cannot read it: {proc.stderr.strip()}")
    try:
        return out.read_bytes()
    finally:
        out.unlink(missing_ok=True)


def check_file(path: Path, workdir: Path) -> str:
    """The file's format, once it is known to be a disk image with a partition table."""
    if not path.is_file():
        raise ImageRefused(path, "no such file")
    fmt = sniff_format(path)
    if fmt == "qcow2":
        partition_table(disk_head(path, fmt, workdir), path)
    return fmt


# -- what is read from the guest: pure functions ---------------------------------------------
def python_candidates(usr_bin: Iterable[str]) -> list[str]:
    """The interpreters to try, in order, given the names in the guest's /usr/bin."""
    versioned = []
    for name in usr_bin:
        m = PYTHON_VERSIONED.match(name)
        if m:
            versioned.append((int(m.group(1)), f"/usr/bin/{name}"))
    return list(PYTHON_FIRST) + [p for _v, p in sorted(versioned, reverse=True)]


def parse_version(text: str) -> tuple[int, int] | None:
    m = re.search(r"(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def choose_python(found: dict[str, tuple[int, int] | None]) -> str | None:
    """The first interpreter (in the order given) that ran and is new enough."""
    for path, version in found.items():
        if version is not None and version >= MIN_PYTHON:
            return path
    return None


@dataclass(frozen=True)
class FstabRoot:
    spec: str  # UUID=..., LABEL=..., /dev/mapper/..., PARTUUID=...
    fstype: str
    options: str


def root_from_fstab(text: str) -> FstabRoot | None:
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 3 and fields[1] == "/":
            return FstabRoot(fields[0], fields[2], fields[3] if len(fields) > 3 else "defaults")
    return None


def boot_cmdlines(files: dict[str, str]) -> list[str]:
    """The kernel command lines a guest's bootloader configuration gives, first entry first:
    GRUB (linux lines), Boot Loader Specification entries (options, with GRUB's $kernelopts
    from grubenv, as Enterprise Linux 8 has it), EXTLINUX/SYSLINUX (APPEND) and
    /etc/kernel/cmdline. `files`: path -> text."""
    env: dict[str, str] = {}
    for path, text in files.items():
        if path.endswith("grubenv"):
            for line in text.splitlines():
                key, sep, value = line.partition("=")
                if sep and not key.startswith("#"):
                    env[key.strip()] = value.strip()

    def expand(words: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), words).strip()

    lines: list[str] = []
    for path, text in files.items():
        if path.endswith("grub.cfg"):
            for line in text.splitlines():
                words = line.strip().split(None, 2)
                if len(words) >= 2 and words[0] in ("linux", "linux16", "linuxefi"):
                    lines.append(expand(words[2] if len(words) > 2 else ""))
        elif path.startswith(BLS_DIR):
            for line in text.splitlines():
                key, _, value = line.strip().partition(" ")
                if key == "options":
                    lines.append(expand(value))
        elif path.endswith((".conf", ".cfg")):  # EXTLINUX / SYSLINUX
            for line in text.splitlines():
                key, _, value = line.strip().partition(" ")
                if key.lower() == "append":
                    lines.append(value.strip())
        elif path == "/etc/kernel/cmdline":
            lines.append(text.strip())
    return [line for line in lines if line]


def _arg(cmdline: str, name: str) -> str | None:
    for word in cmdline.split():
        if word.startswith(name + "="):
            return word[len(name) + 1 :]
    return None


def root_argument(fstab: FstabRoot | None, cmdlines: list[str]) -> str | None:
    """The root= for direct kernel boot: root=UUID=... where anything says it, else what the
    bootloader says, else what /etc/fstab says."""
    from_boot = [r for r in (_arg(c, "root") for c in cmdlines) if r]
    for spec in [*from_boot, fstab.spec if fstab else ""]:
        if spec.startswith("UUID="):
            return f"root={spec}"
    if from_boot:
        return f"root={from_boot[0]}"
    if fstab and fstab.spec and fstab.spec != "none":
        return f"root={fstab.spec}"
    return None


def kernel_cmdline(fstab: FstabRoot | None, cmdlines: list[str]) -> str | None:
    """The whole direct-boot command line, or None when no root can be found."""
    root = root_argument(fstab, cmdlines)
    if root is None:
        return None
    kept: list[str] = []
    for word in (cmdlines[0] if cmdlines else "").split():
        if word.startswith(KEPT_ARGS) and word not in kept:
            kept.append(word)
    if fstab and not any(w.startswith("rootflags=") for w in kept):
        # btrfs subvolumes (Fedora's root=... rootflags=subvol=root) live in fstab
        subvol = [o for o in fstab.options.split(",") if o.startswith("subvol=")]
        if subvol:
            kept.append(f"rootflags={subvol[0]}")
    if (
        fstab
        and fstab.fstype not in ("", "auto")
        and not any(w.startswith("rootfstype=") for w in kept)
    ):
        kept.append(f"rootfstype={fstab.fstype}")
    return " ".join([root, *kept, "rw", builder.KERNEL_FLAGS])


def selinux_type(config: str | None) -> str | None:
    """The policy type an /etc/selinux/config enables (enforcing or permissive), else None."""
    if not config:
        return None
    values = {}
    for line in config.splitlines():
        key, sep, value = line.split("#", 1)[0].partition("=")
        if sep:
            values[key.strip()] = value.strip().strip('"')
    if values.get("SELINUX", "disabled").lower() not in ("enforcing", "permissive"):
        return None
    return values.get("SELINUXTYPE") or "targeted"


def agent_unit(unit: str, python: str) -> str:
    """The agent's unit with its ExecStart on the guest's interpreter (its shebang names
    /usr/bin/python3, which not every distribution has)."""
    agent = f"/{builder.AGENT_DIR}/vmharness-agent"
    out, done = [], False
    for line in unit.splitlines():
        if line.startswith("ExecStart="):
            line, done = f"ExecStart={python} -sS {agent}", True
        out.append(line)
    if not done:
        raise InfraError("the agent's unit has no ExecStart line")
    return "\n".join(out) + "\n"


def version_key(version: str) -> list[tuple[int, int | str]]:
    """Sort key for kernel versions: numbers as numbers (5.14.0-362 after 5.14.0-70)."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-+_~]", version)]


def pick_kernel(boot_names: Iterable[str]) -> tuple[str, str, str] | None:
    """(kernel, initrd, version) file names in /boot: the newest kernel with an initrd, rescue
    kernels left out. Debian's initrd.img-V and Enterprise Linux's initramfs-V.img."""
    names = set(boot_names)
    found = []
    for name in names:
        if not name.startswith("vmlinuz-") or "rescue" in name:
            continue
        version = name.removeprefix("vmlinuz-")
        for initrd in (f"initrd.img-{version}", f"initramfs-{version}.img", f"initrd-{version}"):
            if initrd in names:
                found.append((version_key(version), name, initrd, version))
                break
    if not found:
        return None
    _key, kernel, initrd, version = max(found)
    return kernel, initrd, version


def sanitize_name(text: str) -> str:
    """A name usable in cache paths, from a file name (debian-12-genericcloud-amd64.qcow2)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:64]
    return name or "imported"


# -- what is written into the guest: pure functions -----------------------------------------
def add_console(path: str, text: str) -> str | None:
    """The bootloader file `path` with the serial console on each kernel command line it
    gives, or None when it needs no change. Last on the line, so that /dev/console (where the
    agent's markers go) is the serial port even where the image also names tty0."""

    def add(line: str) -> str:
        return line if "console=ttyS0" in line else line.rstrip() + f" {SERIAL_CONSOLE}"

    out = []
    for line in text.splitlines():
        words = line.strip().split(None, 1)
        first = words[0] if words else ""
        if path.endswith("grub.cfg") and first in ("linux", "linux16", "linuxefi"):
            line = add(line)
        elif path.startswith(BLS_DIR) and first == "options":
            line = add(line)  # after a `$kernelopts` too: GRUB's blscfg expands it in place
        elif path == "/etc/default/grub" and line.startswith("GRUB_CMDLINE_LINUX="):
            m = re.match(r'^GRUB_CMDLINE_LINUX=(["\']?)(.*?)\1\s*$', line)
            if m and "console=ttyS0" not in line:
                line = f'GRUB_CMDLINE_LINUX="{(m.group(2) + " " + SERIAL_CONSOLE).strip()}"'
        elif path.endswith((".conf", ".cfg")) and "grub" not in path and first.lower() == "append":
            line = add(line)
        out.append(line)
    new = "\n".join(out) + ("\n" if text.endswith("\n") else "")
    return new if new != text else None


def with_ca(bundle: str, ca_pem: bytes) -> str | None:
    """A CA bundle with the test CA appended (what update-ca-certificates and update-ca-trust
    make of it), or None when it is there already."""
    pem = ca_pem.decode().strip()
    if pem in bundle:
        return None
    return bundle.rstrip("\n") + ("\n" if bundle.strip() else "") + pem + "\n"


def tar_of(files: dict[str, tuple[bytes, int]], links: dict[str, str]) -> bytes:
    """A tar (for guestfish tar-in) of files owned by root, and symbolic links. No folder
    entries: existing folders keep their owner and mode; missing ones are made (0755)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for rel, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
        for rel, target in sorted(links.items()):
            info = tarfile.TarInfo(rel)
            info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, int(time.time())
            tar.addfile(info)
    return buf.getvalue()


# -- the appliance ---------------------------------------------------------------------------
def check_tools() -> None:
    missing = [t for t in ("guestfish", "qemu-img") if not shutil.which(t)]
    if missing:
        raise InfraError(f"importing an image needs {', '.join(missing)}", hint=TOOL_HINT)


def guestfs_env(accel: str) -> dict[str, str]:
    """libguestfs's environment: its own qemu (no libvirt), under TCG unless KVM works here
    (a /dev/kvm that hangs guests hangs its appliance too). What the user set wins."""
    env = dict(os.environ)
    env.setdefault("LIBGUESTFS_BACKEND", "direct")
    if accel != "kvm":
        env.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
    return env


class GuestfishError(InfraError):
    pass


class Guestfish:
    """One libguestfs appliance on one disk, driven command by command (guestfish --remote)."""

    def __init__(self, disk: Path, accel: str, log: Path) -> None:
        self.disk = disk
        self.env = guestfs_env(accel)
        self.log = log
        self.pid: int | None = None

    def __enter__(self) -> Guestfish:
        # Its output to a file, not a pipe: the server it leaves running keeps both open, and
        # a pipe would never see its end.
        out = self.log.with_suffix(".start")
        with open(out, "w+") as f:
            try:
                code = subprocess.call(
                    ["guestfish", "--listen", "--format=qcow2", "-a", str(self.disk)],
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=self.env,
                    timeout=120,
                )
            except subprocess.TimeoutExpired:
                code = -1  # (a child of its that may have started is named in the text)
            f.seek(0)
            text = f.read()
        out.unlink()
        m = re.search(r"GUESTFISH_PID=(\d+)", text)
        if code != 0 or not m:
            raise GuestfishError(f"guestfish did not start: {text.strip()}", hint=TOOL_HINT)
        self.pid = int(m.group(1))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pid is None:
            return
        try:
            code = subprocess.run(
                ["guestfish", f"--remote={self.pid}", "--", "exit"],
                capture_output=True,
                env=self.env,
                timeout=600,
            ).returncode
        except subprocess.TimeoutExpired:
            code = -1
        if code != 0:  # it is stuck or gone: do not leave an appliance behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.pid = None

    def run(self, *args: str, check: bool = True, timeout: float = 1800) -> str:
        t0 = time.monotonic()
        try:
            proc = subprocess.run(
                ["guestfish", f"--remote={self.pid}", "--", *args],
                capture_output=True,
                text=True,
                env=self.env,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise GuestfishError(
                f"guestfish {args[0]} did not finish in {timeout:.0f}s (see {self.log})",
                hint="nothing was imported; `libguestfs-test-tool` shows whether libguestfs "
                "works here (under emulation it is slow: try again on a quieter machine)",
            ) from None
        with open(self.log, "a") as log:
            log.write(
                f"$ {shlex.join(args)[:300]}  -> {proc.returncode} "
                f"({time.monotonic() - t0:.1f}s)\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}"
            )
        if check and proc.returncode != 0:
            hint = None
            if args[0] == "run":  # the appliance did not start: libguestfs itself
                hint = f"`libguestfs-test-tool` shows why libguestfs cannot work here; {TOOL_HINT}"
            raise GuestfishError(
                f"guestfish {args[0]} failed: {proc.stderr.strip()[-800:]}", hint=hint
            )
        return proc.stdout

    def ok(self, *args: str) -> bool:
        return self.run(*args, check=False).strip() == "true"

    def read(self, path: str, limit: int = READ_LIMIT) -> str | None:
        """A text file of the guest (symlinks followed), or None if there is none (or it is
        larger than `limit`)."""
        if not self.ok("is-file", path, "followsymlinks:true"):
            return None
        size = int(self.run("filesize", path).strip() or 0)
        if size > limit:
            return None
        workdir = self.log.parent
        local = workdir / "read.tmp"
        self.run("download", path, str(local))
        try:
            return local.read_text(errors="replace")
        finally:
            local.unlink(missing_ok=True)


# -- the import ------------------------------------------------------------------------------
@dataclass
class Inspected:
    """What was found in the guest, for the checks, the image's metadata and the messages."""

    distro: str = ""
    python: str = ""
    python_version: str = ""
    cmdline: str = ""
    kernel: str = ""
    initrd: str = ""
    kernel_version: str = ""
    selinux: str | None = None
    boot_texts: dict[str, str] = field(default_factory=dict)  # bootloader files as found
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def inspect_guest(g: Guestfish, path: Path) -> Inspected:
    """Mount the guest's filesystems and check it can be a vmharness guest. ImageRefused
    names every missing thing at once."""
    found = Inspected()
    roots = g.run("inspect-os").split()
    if not roots:
        raise ImageRefused(
            path,
            "no root filesystem found (libguestfs recognised no operating system on any "
            "partition or logical volume)",
        )
    root = roots[0]
    mounts = []
    for line in g.run("inspect-get-mountpoints", root).splitlines():
        mp, sep, dev = line.partition(": ")
        if sep:
            mounts.append((mp.strip(), dev.strip()))
    for mp, dev in sorted(mounts, key=lambda m: (m[0] != "/", m[0].count("/"), m[0])):
        try:
            g.run("mount", dev, mp)
        except GuestfishError as exc:
            if mp == "/":
                problem = f"its root filesystem ({dev}) does not mount: {exc}"
                raise ImageRefused(path, problem) from None
            found.notes.append(f"mount: {mp} ({dev}) not mounted: {exc}")
    kind = g.run("inspect-get-type", root).strip()
    distro = g.run("inspect-get-distro", root).strip()
    major = g.run("inspect-get-major-version", root).strip()
    minor = g.run("inspect-get-minor-version", root).strip()
    found.distro = f"{distro} {major}" + (f".{minor}" if minor not in ("", "0") else "")
    if kind != "linux":
        raise ImageRefused(path, f"its operating system is {kind}, not Linux")
    # systemd as the init
    systemd = [p for p in SYSTEMD_PATHS if g.ok("is-file", p, "followsymlinks:true")]
    if not systemd:
        found.problems.append("no systemd (neither " + " nor ".join(SYSTEMD_PATHS) + " exists)")
    elif g.ok("exists", "/sbin/init"):
        init = g.run("realpath", "/sbin/init").strip()
        if "systemd" not in init:
            found.problems.append(f"no systemd as init (/sbin/init is {init})")
    # a Python for the agent
    usr_bin = g.run("ls", "/usr/bin").split()
    versions: dict[str, tuple[int, int] | None] = {}
    for candidate in python_candidates(usr_bin):
        if not g.ok("is-file", candidate, "followsymlinks:true"):
            continue
        out = g.run(
            "sh",
            f"{candidate} -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'",
            check=False,
        )
        versions[candidate] = parse_version(out)
        if choose_python(versions):
            break  # the first that runs and is new enough: no need to start the others
    python = choose_python(versions)
    if python is None:
        tried = ", ".join(
            f"{p} {'.'.join(map(str, v)) if v else '(does not run)'}" for p, v in versions.items()
        )
        want = ".".join(map(str, MIN_PYTHON))
        found.problems.append(
            f"no Python {want} or newer for the agent (looked for "
            f"{', '.join(PYTHON_FIRST)}, /usr/bin/python3.N; found: {tried or 'none'})"
        )
    else:
        found.python = python
        found.python_version = ".".join(map(str, versions[python] or ()))
    for tool, paths in NEEDED_TOOLS.items():
        if not any(g.ok("is-file", p, "followsymlinks:true") for p in paths):
            found.problems.append(f"no {tool} (looked in {', '.join(paths)})")
    # the kernel, and how it finds its root
    boot = g.run("ls", "/boot").split() if g.ok("is-dir", "/boot") else []
    picked = pick_kernel(boot)
    if picked is None:
        found.problems.append(
            "no kernel with an initrd in /boot (vmlinuz-VERSION and "
            "initrd.img-VERSION or initramfs-VERSION.img)"
        )
    else:
        found.kernel, found.initrd, found.kernel_version = picked
    texts = {p: t for p in BOOT_CONFIGS if (t := g.read(p)) is not None}
    if g.ok("is-dir", BLS_DIR):
        for name in sorted(g.run("ls", BLS_DIR).split(), reverse=True):
            if name.endswith(".conf") and (t := g.read(f"{BLS_DIR}/{name}")) is not None:
                texts[f"{BLS_DIR}/{name}"] = t
    found.boot_texts = {p: t for p, t in texts.items() if not p.endswith("grubenv")}
    fstab = root_from_fstab(g.read("/etc/fstab") or "")
    cmdline = kernel_cmdline(fstab, boot_cmdlines(texts))
    if cmdline is None:
        found.problems.append(
            "no root= found (no / line in /etc/fstab, no root= in the bootloader's configuration)"
        )
    else:
        found.cmdline = cmdline
    found.selinux = selinux_type(g.read("/etc/selinux/config"))
    if found.selinux and not g.ok("is-file", "/usr/sbin/setfiles", "followsymlinks:true"):
        found.problems.append(
            f"it uses SELinux ({found.selinux}) but has no /usr/sbin/setfiles to label "
            "what vmharness adds"
        )
    if found.problems:
        raise ImageRefused(path, "; ".join(found.problems))
    return found


def customize(
    g: Guestfish,
    found: Inspected,
    hostname: str,
    creds: HostCredentials,
    agent_files: dict[str, bytes],
    image_conf: str,
    workdir: Path,
    progress: Progress,
) -> None:
    """Put in what makes a vmharness guest (as built images have it), in one tar, and edit
    the files that must keep theirs: the CA bundles and the bootloader's configuration."""
    files = dict(agent_files)
    files["vmharness-agent.service"] = agent_unit(
        agent_files["vmharness-agent.service"].decode(), found.python
    ).encode()
    identity = builder.guest_identity(hostname, creds, files, image_conf)
    network, config = builder.NETWORK_CONFIG  # used where the agent starts systemd-networkd
    identity[network] = (config.encode(), 0o644)
    unit = f"{builder.UNIT_DIR}/vmharness-agent.service"
    # what `systemctl enable` does, without running the guest's systemctl
    links = {f"{builder.UNIT_DIR}/multi-user.target.wants/vmharness-agent.service": f"/{unit}"}
    # No logins on a test VM, as in built images (debug mode starts serial-getty@ttyS0 itself).
    # The image's other units are left as they are: its boot is the distribution's own.
    links[f"{builder.UNIT_DIR}/getty.target"] = "/dev/null"
    machine_id = (g.read("/etc/machine-id") or "").strip()
    if machine_id in ("", "uninitialized"):  # else every run would be a first boot
        identity["etc/machine-id"] = (os.urandom(16).hex().encode() + b"\n", 0o444)
        found.notes.append("machine-id: set (the image had none)")
    if g.ok("is-dir", "/etc/cloud"):  # vmharness gives cloud-init no data source to wait for
        identity["etc/cloud/cloud-init.disabled"] = (b"", 0o644)
        found.notes.append("cloud-init: disabled")
    if creds.ca_pem is not None and g.ok("is-dir", EL_ANCHORS):
        identity[f"{EL_ANCHORS[1:]}/vmharness-test-ca.pem"] = (creds.ca_pem, 0o644)
    bundle = workdir / "files.tar"
    bundle.write_bytes(tar_of(identity, links))
    progress(f"the agent (on {found.python}), hostname, certificates: {len(identity)} files")
    g.run("tar-in", str(bundle), "/")
    bundle.unlink()
    edits: dict[str, str] = {}
    if creds.ca_pem is not None:
        for path in CA_BUNDLES:
            text = g.read(path, limit=CA_BUNDLE_LIMIT)
            if text is not None and (new := with_ca(text, creds.ca_pem)) is not None:
                edits[path] = new
                found.notes.append(f"ca: the test CA added to {path}")
    for path, text in [
        *found.boot_texts.items(),
        ("/etc/default/grub", g.read("/etc/default/grub")),
    ]:
        if text is not None and (new := add_console(path, text)) is not None:
            edits[path] = new
            found.notes.append(f"console: {SERIAL_CONSOLE} added in {path}")
    if not any(p in edits for p in found.boot_texts):
        there = any("console=ttyS0" in t for t in found.boot_texts.values())
        found.notes.append(
            "console: already on the bootloader's command line"
            if there
            else "console: no bootloader configuration found to add it to"
        )
    for n, (path, text) in enumerate(sorted(edits.items())):
        local = workdir / f"edit{n}"
        local.write_text(text)
        g.run("upload", str(local), path)  # into the file: its owner and mode stay
        local.unlink()
    if found.selinux:
        progress(f"SELinux relabel ({found.selinux} policy, the guest's setfiles)")
        spec = f"/etc/selinux/{found.selinux}/contexts/files/file_contexts"
        g.run("sh", f"setfiles -m -F -e /proc -e /sys -e /dev {spec} /")
        found.notes.append(f"selinux: relabelled ({found.selinux} policy)")
    g.run("download", f"/boot/{found.kernel}", str(workdir / "vmlinuz"))
    g.run("download", f"/boot/{found.initrd}", str(workdir / "initrd.img"))
    g.run("umount-all")


def import_disk(
    source: Path,
    fmt: str,
    workdir: Path,
    *,
    hostname: str,
    creds: HostCredentials,
    image_conf: str,
    accel: str,
    progress: Progress,
) -> tuple[Path, Inspected]:
    """Make workdir/disk.qcow2, vmlinuz and initrd.img from `source` (not written to)."""
    overlay = workdir / "overlay.qcow2"
    proc = subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            fmt,
            "-b",
            str(source.resolve()),
            str(overlay),
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise InfraError(f"cannot make an overlay on {source}: {proc.stderr.strip()}")
    log = workdir / "guestfish.log"
    progress("starting the libguestfs appliance")
    with Guestfish(overlay, accel, log) as g:
        g.run("run", timeout=900)
        progress("inspecting the image (root, systemd, Python, blkid/mount, kernel)")
        found = inspect_guest(g, source)
        progress(
            f"{found.distro}: Python {found.python_version} at {found.python}, "
            f"kernel {found.kernel_version}; installing the agent"
        )
        customize(g, found, hostname, creds, builder.agent_files(), image_conf, workdir, progress)
    progress("flattening into a compressed qcow2")
    disk = workdir / "disk.qcow2"
    builder.to_qcow2(overlay, disk)
    overlay.unlink()
    return disk, found


def import_workdir(tmp_root: Path, name: str) -> Path:
    tmp_root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"import-{name}-", dir=tmp_root))
