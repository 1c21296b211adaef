"""What a VM-universe job's VM needs from qemu: its disks (`vm_disk`), its user's rights, its
command line and the running VM. The VM helper (condor/gahp.py) speaks HTCondor's protocol;
this module starts the VM with the local engine's own code (qemu.py: the same machine, the
same accelerator choice, the same way of running and stopping qemu).

Security: the helper runs as root, so nothing here opens a job's file as root. Disks are
checked by a child process that has become the job's user (`as_user`), and qemu itself runs
as that user, so a disk (or a qcow2's backing file) the user may not open is never opened.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .job import VMJob, VMOutcome
from .qemu import VMInterrupted, VMProcesses, _opt, _run_qemu, _stop, machine_command

FORMATS = ("raw", "qcow2", "qed", "vmdk", "vdi", "vhdx", "vpc")
CDROM_MARK = ".iso"  # a disk file whose name contains it is a CD-ROM (as HTCondor's helper)
QCOW2_MAGIC = "514649fb"  # "QFI\xfb"
DEVICE_RE = re.compile(r"^(vd|hd|sd|xvd)([a-z]{1,2})[0-9]*$")
MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
AHCI_PORTS = 6  # q35's SATA controller: ide.0 .. ide.5
NO_TIMEOUT_S = 10 * 365 * 24 * 3600  # VM universe: HTCondor's policy ends a VM, not a clock
STARTUP_TIMEOUT_S = 60  # qemu start to its monitor answering (devices and disks opened)
USER_CHILD_TIMEOUT_S = 60


class DiskSpecError(ValueError):
    """vm_disk is malformed, or names a disk the job's user may not use."""


class StartFailed(Exception):
    """qemu did not come up. `bad_image`: because of a disk (the job's fault: hold it)."""

    def __init__(self, message: str, *, bad_image: bool = False) -> None:
        super().__init__(message)
        self.bad_image = bad_image


@dataclass(frozen=True)
class Disk:
    given: str  # the file as vm_disk names it
    path: Path  # where it is: in the sandbox (transferred) or absolute (a shared filesystem)
    device: str  # vda, hdc, ... (the guest's order; vd* virtio, hd*/sd* SATA)
    writable: bool
    fmt: str | None  # None: sniffed (qcow2 by its magic, else raw)
    cdrom: bool
    in_sandbox: bool = False  # transferred with the job: the user's own copy

    @property
    def bus(self) -> str:
        return "virtio" if self.device.startswith(("vd", "xvd")) and not self.cdrom else "sata"


def parse_vm_disk(text: str, sandbox: Path) -> list[Disk]:
    """`VMPARAM_vm_Disk`: comma-separated `file:device:permission[:format]`. A file found in the
    sandbox by its base name is that transferred copy; any other must be an absolute path.
    `w` or `rw` is writable, anything else read-only. Raises DiskSpecError."""
    if not text or not text.strip():
        raise DiskSpecError("vm_disk names no disk")
    disks: list[Disk] = []
    for n, item in enumerate(text.split(","), start=1):
        fields = [f.strip() for f in item.split(":")]
        if not 3 <= len(fields) <= 4:
            raise DiskSpecError(
                f"disk {n} ({item.strip()!r}) is not file:device:permission[:format]"
            )
        given, device, perm = fields[0], fields[1].lower(), fields[2].lower()
        if not given or "\0" in given or "\n" in given:
            raise DiskSpecError(f"disk {n} has no file name")
        if not DEVICE_RE.match(device):
            raise DiskSpecError(
                f"disk {n} ({given}): device {fields[1]!r} is not like vda, hdb or sdc"
            )
        fmt = fields[3].lower() if len(fields) == 4 and fields[3] else None
        if fmt is not None and fmt not in FORMATS:
            raise DiskSpecError(
                f"disk {n} ({given}): format {fields[3]!r} is not one of {', '.join(FORMATS)}"
            )
        base = os.path.basename(given)
        in_sandbox = sandbox / base
        if base and base not in (".", "..") and in_sandbox.is_file():
            path = in_sandbox  # transferred with the job (HTCondor matches by base name)
        elif os.path.isabs(given):
            path = Path(os.path.normpath(given))
        else:
            raise DiskSpecError(
                f"disk {n} ({given}) is not in the job's sandbox and is not an absolute path "
                "(transfer it with the job, or name it by its full path on a shared filesystem)"
            )
        cdrom = CDROM_MARK in base.lower()
        disks.append(
            Disk(
                given=given,
                path=path,
                device=device,
                writable=perm in ("w", "rw") and not cdrom,
                fmt=fmt or ("raw" if cdrom else None),
                cdrom=cdrom,
                in_sandbox=path == in_sandbox,
            )
        )
    devices = [d.device for d in disks]
    if len(set(devices)) != len(devices):
        raise DiskSpecError(f"two disks on one device: {', '.join(devices)}")
    writable = [d.path for d in disks if d.writable]
    if len(set(writable)) != len(writable):
        raise DiskSpecError("one file is named twice as a writable disk")
    if sum(d.bus == "sata" for d in disks) > AHCI_PORTS:
        raise DiskSpecError(f"more than {AHCI_PORTS} hd/sd disks and CD-ROMs")
    return disks


# -- the job's user -----------------------------------------------------------------------------
@dataclass(frozen=True)
class JobUser:
    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str

    @classmethod
    def from_ids(cls, uid: int, gid: int | None = None) -> JobUser:
        try:
            pw = pwd.getpwuid(uid)
            name, primary = pw.pw_name, pw.pw_gid
            groups = tuple(os.getgrouplist(name, gid if gid is not None else primary))
        except KeyError:  # a uid without a name (HTCondor's slot users may be like that)
            name, primary, groups = str(uid), uid, ()
        gid = gid if gid is not None else primary
        return cls(uid=uid, gid=gid, groups=tuple(g for g in groups if g != 0) or (gid,), name=name)

    def popen(self) -> dict[str, Any]:
        """Popen arguments that make the child this user (groups included), never root."""
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}


# The work the helper does with the job's rights, in a child that has become the user: it
# reads JSON actions from argv and prints one JSON answer. Standard library only (it runs
# with -I, so nothing from the environment or the current folder is imported).
_USER_CHILD = r"""
import json, os, stat, sys
actions, answers = json.loads(sys.argv[1]), []
for a in actions:
    kind, path = a["do"], a.get("path", "")
    try:
        if kind == "check":
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                answers.append({"error": "it is not a regular file"}); continue
            want = os.R_OK | (os.W_OK if a["write"] else 0)
            if a["write"] and a.get("own") and st.st_uid == os.getuid() and not os.access(
                    path, os.W_OK):
                os.chmod(path, st.st_mode | 0o200)  # the user's own copy, transferred read-only
            if not os.access(path, want):
                answers.append({"error": "the job's user may not %s it" % (
                    "read and write" if a["write"] else "read")}); continue
            with open(path, "rb") as f:
                magic = f.read(4).hex()
            answers.append({"ok": True, "magic": magic, "size": st.st_size})
        elif kind == "access":
            answers.append({"ok": os.access(path, os.R_OK | os.W_OK)})
        elif kind == "touch":
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                os.utime(path)
            answers.append({"ok": True})
        elif kind == "write":
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(a["text"])
            answers.append({"ok": True})
        elif kind == "remove":
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                os.unlink(path)
            answers.append({"ok": True})
        else:
            answers.append({"error": "unknown action"})
    except OSError as e:
        answers.append({"error": e.strerror or str(e)})
print(json.dumps(answers))
"""


def _world_usable(path: str) -> bool:
    """Every user may run it: the file and each folder above it are executable by others."""
    p = Path(path)
    try:
        return all(q.stat().st_mode & 0o001 for q in [p, *p.parents])
    except OSError:
        return False


def _python_for_users() -> str:
    """A Python the job's user can run (the child needs the standard library only): this
    one's base interpreter, unless it lives where others cannot go (/root/.pyenv ...)."""
    for candidate in (
        os.path.realpath(sys.executable),
        "/usr/bin/python3",
        "/usr/local/bin/python3",
    ):
        if _world_usable(candidate):
            return candidate
    return os.path.realpath(sys.executable)


def as_user(user: JobUser, actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run file actions (check, access, touch, write, remove) as the job's user; one answer
    per action, {"error": why} where it failed. Raises OSError if the child cannot run."""
    if user.uid == 0 or user.gid == 0:
        raise PermissionError("refusing to act for uid or gid 0: VM jobs never run as root")
    proc = subprocess.run(
        [_python_for_users(), "-I", "-c", _USER_CHILD, json.dumps(actions)],
        capture_output=True,
        text=True,
        timeout=USER_CHILD_TIMEOUT_S,
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        **user.popen(),
    )
    try:
        answers = json.loads(proc.stdout)
    except ValueError:
        raise OSError(
            f"the check as uid {user.uid} failed (exit {proc.returncode}): "
            f"{proc.stderr.strip()[-300:]}"
        ) from None
    if not isinstance(answers, list) or len(answers) != len(actions):
        raise OSError(f"the check as uid {user.uid} answered {proc.stdout[:200]!r}")
    return answers


def check_disks(disks: list[Disk], user: JobUser) -> list[Disk]:
    """Each disk as the job's user may use it (read, and write if writable), with its format
    settled; DiskSpecError naming the first it may not. Nothing is opened as root."""
    answers = as_user(
        user,
        [
            {"do": "check", "path": str(d.path), "write": d.writable, "own": d.in_sandbox}
            for d in disks
        ],
    )
    settled = []
    for disk, answer in zip(disks, answers, strict=True):
        if "error" in answer:
            mode = "read and write" if disk.writable else "read"
            raise DiskSpecError(
                f"disk {disk.given} ({disk.path}, {mode}): {answer['error']} "
                f"(as the job's user {user.name}, uid {user.uid})"
            )
        fmt = disk.fmt or ("qcow2" if answer.get("magic") == QCOW2_MAGIC else "raw")
        settled.append(replace(disk, fmt=fmt))
    return settled


# -- the command line ---------------------------------------------------------------------------
@dataclass(frozen=True)
class UniverseVM:
    """One VM-universe VM, as the job ad asks for it."""

    name: str
    disks: list[Disk]
    memory_mib: int
    cpus: int = 1
    network: str = "none"  # none | user (qemu user-mode NAT: the job's "nat")
    mac: str | None = None
    console: Path | None = None  # the serial console's file (in the sandbox)
    wall_timeout_s: int | None = None  # stop it after this long (vmharness's own jobs)
    notes: list[str] = field(default_factory=list)


def _device_order(device: str) -> tuple[int, str]:
    m = DEVICE_RE.match(device)
    letters = m.group(2) if m else device
    return (len(letters), letters)


def universe_command(
    vm: UniverseVM, accel: str, qmp_fd: int, qmp_socket: Path, workdir: Path
) -> list[str]:
    """qemu's command line: the local engine's machine (machine_command), the QMP monitor on a
    listening socket the helper made (fd passing: qemu needs no folder of its own), the MAC,
    and the disks, the first one named booting through its own bootloader."""
    first = vm.disks[0]
    job = VMJob(
        name=vm.name,
        base_disk=first.path,
        kernel=None,
        initrd=None,
        cmdline="",
        input_disk=first.path,
        output_disk=first.path,
        workdir=workdir,
        console_log=vm.console or Path("/dev/null"),
        memory_mib=vm.memory_mib,
        cpus=vm.cpus,
        network=vm.network,
        wall_timeout_s=vm.wall_timeout_s or NO_TIMEOUT_S,
    )
    cmd = machine_command(job, accel, qmp_socket, job.console_log)
    at = cmd.index("-qmp")
    del cmd[at : at + 2]
    cmd += [
        "-chardev",
        f"socket,id=vmh-qmp,fd={qmp_fd},server=on,wait=off",
        "-mon",
        "chardev=vmh-qmp,mode=control",
    ]
    if vm.mac and vm.network != "none":
        nic = cmd.index("-nic") + 1
        cmd[nic] += f",mac={vm.mac}"
    virtio = sorted(
        (d for d in vm.disks if d.bus == "virtio"), key=lambda d: _device_order(d.device)
    )
    sata = sorted((d for d in vm.disks if d.bus == "sata"), key=lambda d: _device_order(d.device))
    port = 0
    for n, disk in enumerate(virtio + sata):
        node = f"vmh-disk{n}"
        drive = f"file={_opt(disk.path)},if=none,id={node},format={disk.fmt or 'raw'}"
        if disk.cdrom:
            drive += ",media=cdrom,readonly=on"
        elif not disk.writable:
            drive += ",readonly=on"
        boot = ",bootindex=1" if disk is first else ""
        if disk.bus == "virtio":
            device = f"virtio-blk-pci,drive={node}{boot}"
        else:
            kind = "ide-cd" if disk.cdrom else "ide-hd"
            device = f"{kind},drive={node},bus=ide.{port}{boot}"
            port += 1
        cmd += ["-drive", drive, "-device", device]
    return cmd


# -- the running VM -----------------------------------------------------------------------------
def _tail(path: Path, lines: int = 4) -> str:
    with contextlib.suppress(OSError):
        text = path.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])
    return ""


class RunningVM:
    """qemu for one UniverseVM, run as the job's user, in a thread of its own (which must live
    as long as qemu: qemu dies with the thread that started it)."""

    def __init__(
        self,
        vm: UniverseVM,
        user: JobUser,
        accel: str,
        workdir: Path,
        *,
        on_end: Callable[[RunningVM, VMOutcome], None] = lambda _vm, _outcome: None,
        log: Callable[[str], None] = lambda _m: None,
    ) -> None:
        self.vm, self.user, self.accel, self.workdir = vm, user, accel, workdir
        self.on_end, self.log = on_end, log
        self.qmp_socket = workdir / "qmp.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.outcome: VMOutcome | None = None
        self.stop_requested = False
        self._started = threading.Event()
        self._ended = threading.Event()  # qemu is gone and on_end has run
        self._thread: threading.Thread | None = None
        self._procs: VMProcesses | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._ended.is_set()

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def start(self) -> None:
        """Start qemu and return once its monitor answers (its disks are open). StartFailed
        when it does not come up, with qemu's own words."""
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.qmp_socket.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.qmp_socket))
            listener.listen(2)
            fd = listener.fileno()
            cmd = universe_command(self.vm, self.accel, fd, self.qmp_socket, self.workdir)
            self.log(f"{self.vm.name}: qemu (as {self.user.name}, uid {self.user.uid}): {cmd}")
            # qemu becomes the job's user; vm/lifetime.py (through VMProcesses) has the kernel
            # kill it when the helper dies.
            popen = {**self.user.popen(), "pass_fds": (fd,)}
            self._procs = VMProcesses(popen)
            self._thread = threading.Thread(
                target=self._run, args=(cmd,), name=f"vm-{self.vm.name}", daemon=True
            )
            self._thread.start()
            self._started.wait(STARTUP_TIMEOUT_S)
        finally:
            listener.close()  # qemu has its own copy; ours would keep a dead qemu's socket open
        if self.proc is None:
            self._ended.wait(5)
            why = self.outcome.reason if self.outcome else "qemu did not start"
            raise StartFailed(why)
        self._wait_for_monitor()

    def _wait_for_monitor(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._ended.wait(10)
                stderr = _tail(self.workdir / "qemu-stderr.log")
                disk_words = ("image", "format", "could not open", "drive", "permission", "disk")
                bad = any(w in stderr.lower() for w in disk_words)
                raise StartFailed(
                    f"qemu exited with code {self.proc.returncode} at start: "
                    f"{stderr or 'no message'}",
                    bad_image=bad,
                )
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.settimeout(1.0)
                s.connect(str(self.qmp_socket))
                if b"QMP" in s.recv(4096):
                    return
            time.sleep(0.05)
        self.stop()
        raise StartFailed(f"qemu's monitor did not answer within {STARTUP_TIMEOUT_S}s")

    def _run(self, cmd: list[str]) -> None:
        job_like = VMJob(
            name=self.vm.name,
            base_disk=self.vm.disks[0].path,
            kernel=None,
            initrd=None,
            cmdline="",
            input_disk=self.vm.disks[0].path,
            output_disk=self.vm.disks[0].path,
            workdir=self.workdir,
            console_log=self.vm.console or Path("/dev/null"),
            memory_mib=self.vm.memory_mib,
            cpus=self.vm.cpus,
            network=self.vm.network,
            wall_timeout_s=self.vm.wall_timeout_s or NO_TIMEOUT_S,
        )
        assert self._procs is not None

        def started(proc: subprocess.Popen[bytes]) -> None:
            self.proc = proc
            self._started.set()

        t0 = time.monotonic()
        try:
            outcome = _run_qemu(self._procs, job_like, self.accel, cmd, self.qmp_socket, started)
            if self.stop_requested and outcome.ended != "timeout":
                outcome.ended, outcome.reason = "error", "stopped by HTCondor (CONDOR_VM_STOP)"
        except VMInterrupted:
            outcome = VMOutcome(
                ended="error",
                seconds=time.monotonic() - t0,
                accelerator=self.accel,
                reason="stopped by HTCondor (CONDOR_VM_STOP)",
            )
        except Exception as exc:  # noqa: BLE001 - the helper must learn whatever it was
            outcome = VMOutcome(
                ended="error",
                seconds=time.monotonic() - t0,
                accelerator=self.accel,
                reason=f"qemu could not be run: {type(exc).__name__}: {exc}",
            )
        finally:
            self._started.set()
        outcome.boot = "boot from disk"
        self.outcome = outcome
        try:
            self.on_end(self, outcome)
        except Exception as exc:  # noqa: BLE001
            self.log(f"{self.vm.name}: cleaning up after the VM failed: {exc}")
        finally:
            self._ended.set()

    def stop(self, wait_s: float = 30) -> None:
        """Quit qemu (QMP, then SIGKILL) and wait until the end is recorded."""
        self.stop_requested = True
        if self._procs is not None:
            self._procs.stop_all()
        elif self.proc is not None and self.proc.poll() is None:
            _stop(self.proc, self.qmp_socket)
        self._ended.wait(wait_s)

    def wait(self, timeout: float | None = None) -> bool:
        return self._ended.wait(timeout)
