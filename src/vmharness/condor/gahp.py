"""vmharness-vm-gahp: HTCondor's VM universe helper (the "VM GAHP") for `vm_type = kvm`, with
qemu started the way vmharness starts every VM (vm/universe.py, vm/qemu.py).

An execute point names it as VM_GAHP_SERVER; HTCondor runs it as root in three modes:
    -f [-t] -M 0 vmtype kvm               discovery (the startd): VM ClassAd lines on stdout
    -f [-t] -M 3                          one job (the starter): the protocol on stdin/stdout
    -f [-t] -M 4 vmtype kvm match NAME    kill the job's VM NAME (starter and startd)
The protocol, as HTCondor 23.9's starter speaks it (read from its source; see docs/condor.md):
commands end with \\r\\n; arguments are separated by unescaped spaces, `\\` escapes the next
character; the helper answers `S ...` (accepted) or `E` (malformed), and requests that take
time (CONDOR_VM_START, _STOP, _STATUS, _GETPID, ...) are answered later through RESULTS as
`<reqid> 0 <result>` or `<reqid> 1 <ERROR_CODE>`; in async mode a lone `R` line says that
results wait. Nothing else is ever written to stdout; the log goes to VM_GAHP_LOG (or stderr
with -t).

Security: it runs as root. Each VM runs as the job's user (VMGAHP_USER_UID/GID) and each disk
is checked with that user's rights (vm/universe.py); the registry of running VMs (for kill
mode and for the clean-up after a crash) is root's, outside the sandbox.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from .. import __version__
from ..vm.accel import ACCEL_ENV, QEMU, choose_accelerator
from ..vm.job import VMOutcome
from ..vm.universe import (
    MAC_RE,
    DiskSpecError,
    JobUser,
    RunningVM,
    StartFailed,
    UniverseVM,
    as_user,
    check_disks,
    parse_vm_disk,
)
from ..wire.codec import to_text
from ..wire.formats import OUTCOME
from .job import OUTCOME_FILE

GAHP_VERSION = "0.0.1"  # the protocol version HTCondor's own helper reports
BANNER = f"$VMGahpVersion {GAHP_VERSION} Dec 2 2026 Condor\\ VMGAHP $"
VM_TYPE = "kvm"
MAX_LINE = 10 * 1024 - 1  # the starter reads a reply line into a 10 KiB buffer
MAX_INPUT_LINE = 1 << 20
CONSOLE_FILE = "console.log"  # the serial console, in the sandbox (vmharness transfers it)
MARKER_ATTR = "VmharnessVMGahp"  # in the machine ad: this helper, so console.log comes back
WALL_ATTR = "VmharnessWallTimeout"  # in a job ad: stop the VM after this many seconds
DEFAULT_REGISTRY = "/run/vmharness-vm-gahp"
QEMU_OVERHEAD_MIB = 256  # what qemu itself takes beyond the guest's memory (see docs)

# Error codes (HTCondor's names: the starter holds the job for the first group)
ERR_NO_MEMORY = "VMGAHP_ERR_JOBCLASSAD_NO_VM_MEMORY_PARAM"
ERR_NO_DISK = "VMGAHP_ERR_JOBCLASSAD_KVM_NO_DISK_PARAM"
ERR_BAD_DISK = "VMGAHP_ERR_JOBCLASSAD_KVM_INVALID_DISK_PARAM"
ERR_BAD_IMAGE = "VMGAHP_ERR_BAD_IMAGE"
HOLDING_ERRORS = (ERR_NO_MEMORY, ERR_NO_DISK, ERR_BAD_DISK, ERR_BAD_IMAGE)
ERR_NO_AD = "VMGAHP_ERR_NO_JOBCLASSAD_INFO"
ERR_VM_TYPE = "VMGAHP_ERR_NO_SUPPORTED_VM_TYPE"
ERR_TOO_MUCH_MEMORY = "VMGAHP_ERR_JOBCLASSAD_TOO_MUCH_MEMORY_REQUEST"
ERR_NETWORKING = "VMGAHP_ERR_JOBCLASSAD_MISMATCHED_NETWORKING"
ERR_NETWORKING_TYPE = "VMGAHP_ERR_JOBCLASSAD_MISMATCHED_NETWORKING_TYPE"
ERR_NOT_FOUND = "VMGAHP_ERR_VM_NOT_FOUND"
ERR_NO_SUSPEND = "VMGAHP_ERR_VM_NO_SUPPORT_SUSPEND"
ERR_NO_CHECKPOINT = "VMGAHP_ERR_VM_NO_SUPPORT_CHECKPOINT"
ERR_INTERNAL = "VMGAHP_ERR_INTERNAL"
ERR_CRITICAL = "VMGAHP_ERR_CRITICAL"

VM_COMMANDS = (
    "CONDOR_VM_START",
    "CONDOR_VM_STOP",
    "CONDOR_VM_SUSPEND",
    "CONDOR_VM_SOFT_SUSPEND",
    "CONDOR_VM_RESUME",
    "CONDOR_VM_CHECKPOINT",
    "CONDOR_VM_STATUS",
    "CONDOR_VM_GETPID",
)
PLAIN_COMMANDS = (
    "ASYNC_MODE_ON",
    "ASYNC_MODE_OFF",
    "QUIT",
    "VERSION",
    "COMMANDS",
    "SUPPORT_VMS",
    "RESULTS",
    "CLASSAD",
    "CLASSAD_END",
)
# What COMMANDS answers: the async switches, the VM commands, then the rest.
COMMANDS = (*PLAIN_COMMANDS[:2], *VM_COMMANDS, *PLAIN_COMMANDS[2:])


class GahpError(Exception):
    """A request that failed with one of HTCondor's error codes; `detail` is for the log."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code, self.detail = code, detail


# -- the wire -----------------------------------------------------------------------------------
def split_command(line: str) -> list[str]:
    """A command line's arguments: unescaped spaces and tabs separate (two in a row make an
    empty argument, which no command accepts), `\\` takes the next character as it is."""
    args, cur, escaped = [], [], False
    for ch in line.rstrip("\r\n"):
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in " \t\r\n":
            args.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    args.append("".join(cur))
    return args


def escape(token: str) -> str:
    """One reply argument: spaces and backslashes escaped; line ends can never be in one."""
    token = token.replace("\r", " ").replace("\n", " ")
    return re.sub(r"([\\ \t])", r"\\\1", token)


def reply_line(tokens: list[str]) -> str:
    line = " ".join(escape(t) for t in tokens)
    if len(line.encode()) > MAX_LINE:
        line = line.encode()[:MAX_LINE].decode(errors="ignore").rstrip("\\")
    return line


# -- the job ad ---------------------------------------------------------------------------------
_STRING_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "\\": "\\", '"': '"'}


def parse_literal(expr: str) -> Any:
    """The value of a ClassAd literal: str, int, float, bool, None for undefined/error; any
    other expression comes back as an `Expr` (not evaluated: the helper needs literals only)."""
    text = expr.strip()
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("undefined", "error"):
        return None
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    if re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?", text):
        return float(text)
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        out, i, body = [], 0, text[1:-1]
        while i < len(body):
            ch = body[i]
            if ch == '"':
                return Expr(text)  # "a" + "b" and the like: not one literal
            if ch == "\\" and i + 1 < len(body):
                nxt = body[i + 1]
                if nxt in _STRING_ESCAPES:
                    out.append(_STRING_ESCAPES[nxt])
                    i += 2
                    continue
                m = re.match(r"[0-7]{1,3}", body[i + 1 :])
                if m:
                    out.append(chr(int(m.group(0), 8)))
                    i += 1 + len(m.group(0))
                    continue
                out.append(nxt)
                i += 2
                continue
            out.append(ch)
            i += 1
        return "".join(out)
    return Expr(text)


@dataclass(frozen=True)
class Expr:
    text: str


class JobAd:
    """The job ad as the starter sends it: `Name = expression` lines (names without case)."""

    def __init__(self) -> None:
        self.attrs: dict[str, tuple[str, str]] = {}  # lower name -> (name, expression)

    def add_line(self, line: str) -> bool:
        name, sep, expr = line.partition("=")
        name = name.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", name):
            return False
        self.attrs[name.lower()] = (name, expr.strip())
        return True

    def __contains__(self, name: str) -> bool:
        return name.lower() in self.attrs

    def raw(self, name: str) -> str | None:
        got = self.attrs.get(name.lower())
        return got[1] if got else None

    def value(self, name: str) -> Any:
        raw = self.raw(name)
        return None if raw is None else parse_literal(raw)

    def int(self, name: str) -> int | None:
        v = self.value(name)
        if isinstance(v, bool):
            return None
        if isinstance(v, int):
            return v
        if isinstance(v, float) and v.is_integer():
            return int(v)
        return None

    def bool(self, name: str, default: bool = False) -> bool:
        v = self.value(name)
        return v if isinstance(v, bool) else default

    def str(self, name: str) -> str | None:
        v = self.value(name)
        return v if isinstance(v, str) else None


def vm_name(ad: JobAd) -> str | None:
    """HTCondor's name for a job's VM (what kill mode is given): User with @ as _, then
    _<ClusterId>.<ProcId>."""
    user, cluster, proc = ad.str("User"), ad.int("ClusterId"), ad.int("ProcId")
    if user is None or cluster is None or proc is None:
        return None
    return f"{user.replace('@', '_')}_{cluster}.{proc}"


def safe_name(name: str) -> str:
    """A registry file name for a VM name (the same for kill mode's `match NAME`)."""
    clean = re.sub(r"[^A-Za-z0-9._@+-]", "_", name)[:200]
    return clean if clean and not clean.startswith(".") else f"_{clean}"


# -- configuration and log ----------------------------------------------------------------------
def condor_param(name: str) -> str | None:
    """A value of the HTCondor configuration (condor_config_val), None where undefined.
    `_CONDOR_<NAME>` in the environment wins, as it does for HTCondor itself."""
    if os.environ.get(f"_CONDOR_{name}"):
        return os.environ[f"_CONDOR_{name}"].strip()
    exe = shutil.which("condor_config_val") or "/usr/bin/condor_config_val"
    try:
        proc = subprocess.run(
            [exe, name], capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = proc.stdout.strip()
    return value if proc.returncode == 0 and value else None


def _truthy(text: str | None, default: bool = False) -> bool:
    if text is None:
        return default
    return text.strip().lower() in ("true", "yes", "1", "t", "y", "on")


def _mem_total_mib() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 0


@dataclass
class GahpConfig:
    """What the helper reads from the HTCondor configuration of the execute point."""

    vm_type: str = VM_TYPE
    max_memory_mib: int = 0
    networking: bool = False
    networking_types: tuple[str, ...] = ("nat",)
    default_networking_type: str = "nat"
    log_file: str | None = None
    registry: Path = Path(DEFAULT_REGISTRY)
    probe_kernel: Path | None = None
    accel: str = "auto"
    notes: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, param: Callable[[str], str | None] = condor_param) -> GahpConfig:
        cfg = cls()
        cfg.vm_type = (param("VM_TYPE") or VM_TYPE).strip().lower()
        memory = param("VM_MEMORY")
        try:
            cfg.max_memory_mib = int(memory) if memory else 0
        except ValueError:
            cfg.notes.append(f"VM_MEMORY = {memory!r} is not a whole number of MiB")
        if not memory:
            cfg.max_memory_mib = _mem_total_mib() // 2
            cfg.notes.append(
                f"VM_MEMORY is not set: offering half of this machine's memory "
                f"({cfg.max_memory_mib} MiB)"
            )
        cfg.networking = _truthy(param("VM_NETWORKING"))
        types = [
            t.strip().lower()
            for t in re.split(r"[,\s]+", param("VM_NETWORKING_TYPE") or "nat")
            if t.strip()
        ]
        unsupported = [t for t in types if t != "nat"]
        if unsupported:
            cfg.notes.append(
                f"VM_NETWORKING_TYPE {', '.join(unsupported)} not offered: this helper has "
                "nat only (qemu user-mode networking)"
            )
        cfg.networking_types = tuple(t for t in types if t == "nat")
        if cfg.networking and not cfg.networking_types:
            cfg.networking = False
        cfg.default_networking_type = (param("VM_NETWORKING_DEFAULT_TYPE") or "nat").lower()
        cfg.log_file = param("VM_GAHP_LOG")
        cfg.registry = Path(param("VMHARNESS_VM_GAHP_REGISTRY") or DEFAULT_REGISTRY)
        kernel = param("VMHARNESS_VM_GAHP_PROBE_KERNEL")
        if kernel:
            cfg.probe_kernel = Path(kernel)
        else:  # the machine's own kernel (root may read it)
            for own in (Path(f"/boot/vmlinuz-{os.uname().release}"), Path("/boot/vmlinuz")):
                if own.is_file():
                    cfg.probe_kernel = own
                    break
        cfg.accel = (param("VMHARNESS_VM_GAHP_ACCEL") or "auto").strip().lower()
        return cfg


class Log:
    """Lines with a time and the process id, to VM_GAHP_LOG or to stderr."""

    def __init__(self, mode: str, stream: IO[str] | None = None, path: str | None = None):
        self.mode, self.stream, self.path = mode, stream, path
        self._lock = threading.Lock()

    def __call__(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        text = "".join(
            f"{stamp} vmharness-vm-gahp[{os.getpid()}] {self.mode}: {line}\n"
            for line in (message.splitlines() or [""])
        )
        with self._lock:
            try:
                if self.path and self.path != "/dev/null":
                    fd = os.open(
                        self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644
                    )
                    with os.fdopen(fd, "a") as f:
                        f.write(text)
                elif self.stream is not None:
                    self.stream.write(text)
                    self.stream.flush()
            except OSError:
                pass


# -- the registry of running VMs ----------------------------------------------------------------
def _start_time(pid: int) -> str | None:
    """A process's start time (field 22 of /proc/PID/stat): with the pid, its identity. None
    when there is no such process, or only its corpse (a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _alive(pid: int, start: str | None) -> bool:
    return pid > 0 and start is not None and _start_time(pid) == start


class Registry:
    """Root's record of the VMs this machine runs, outside every sandbox: <root>/vms/NAME.json
    (who runs it: the helper's and qemu's pids and start times) and <root>/vms/NAME/ (qemu's
    monitor socket and logs). Kill mode and the clean-up after a crash work from it."""

    def __init__(self, root: Path, log: Callable[[str], None] = lambda _m: None) -> None:
        self.root, self.log = root, log
        self.vms = root / "vms"

    def ensure(self) -> None:
        for folder in (self.root, self.vms):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = folder.lstat()
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
                raise GahpError(
                    ERR_CRITICAL,
                    f"the registry folder {folder} must be a folder of uid {os.geteuid()} that "
                    "nobody else may write (set VMHARNESS_VM_GAHP_REGISTRY to another one)",
                )

    def workdir(self, name: str) -> Path:
        return self.vms / safe_name(name)

    def record(self, name: str, **fields: Any) -> None:
        self.ensure()
        path = self.vms / f"{safe_name(name)}.json"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"name": name, **fields}) + "\n")
        os.replace(tmp, path)

    def entries(self) -> list[dict[str, Any]]:
        found = []
        for path in sorted(self.vms.glob("*.json")) if self.vms.is_dir() else []:
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(path.read_text())
                if isinstance(data, dict):
                    data["_file"] = path
                    found.append(data)
        return found

    def forget(self, name: str) -> None:
        (self.vms / f"{safe_name(name)}.json").unlink(missing_ok=True)
        shutil.rmtree(self.workdir(name), ignore_errors=True)

    def kill(self, entry: dict[str, Any]) -> bool:
        """Stop the entry's qemu if it is still that process; forget the entry. True if a
        qemu was running."""
        pid, start = int(entry.get("qemu_pid") or 0), entry.get("qemu_start")
        was = _alive(pid, start)
        if was:
            sock = self.workdir(entry["name"]) / "qmp.sock"
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(2)
                    s.connect(str(sock))
                    s.recv(4096)
                    s.sendall(b'{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n')
                    s.recv(4096)
            except OSError:  # no monitor: qemu quits on SIGTERM too
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 3
            while _alive(pid, start) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid, start):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 5
                while _alive(pid, start) and time.monotonic() < deadline:
                    time.sleep(0.05)
        self.forget(entry["name"])
        return was

    def kill_matching(self, match: str) -> int:
        want = safe_name(match)
        killed = 0
        for entry in self.entries():
            if entry["_file"].stem in (want,) or entry["_file"].stem.startswith(f"{want}-vm"):
                killed += self.kill(entry)
                self.log(f"kill {entry['name']}: qemu pid {entry.get('qemu_pid')} stopped")
        return killed

    def sweep(self) -> int:
        """Stop and forget the VMs whose helper is gone (killed, crashed, a restarted startd
        that lost its starters)."""
        swept = 0
        with contextlib.suppress(OSError), self._lock():
            for entry in self.entries():
                if _alive(int(entry.get("helper_pid") or 0), entry.get("helper_start")):
                    continue
                was = self.kill(entry)
                swept += 1
                self.log(
                    f"clean-up: {entry['name']} (helper pid {entry.get('helper_pid')} is gone): "
                    + ("its qemu was still running: stopped" if was else "no qemu left")
                )
        return swept

    @contextlib.contextmanager
    def _lock(self):
        self.ensure()
        with open(self.root / "lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield


# -- the VMs of one job -------------------------------------------------------------------------
class Backend(Protocol):
    def start(self, vmid: int, ad: JobAd) -> None: ...
    def status(self, vmid: int) -> str | None: ...  # Running | Stopped | None (unknown)
    def stop(self, vmid: int) -> bool: ...  # False: unknown
    def known(self, vmid: int) -> bool: ...
    def quit(self) -> None: ...


def _cgroup_memory_limit() -> int | None:
    """This process's cgroup v2 memory limit in bytes (the job's, under HTCondor), if any."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                text = (Path("/sys/fs/cgroup") / line[3:].lstrip("/") / "memory.max").read_text()
                return None if text.strip() == "max" else int(text)
    return None


class QemuBackend:
    """Starts each job VM with qemu as the job's user; keeps the registry up to date."""

    def __init__(
        self, config: GahpConfig, user: JobUser, registry: Registry, log: Callable[[str], None]
    ) -> None:
        self.config, self.user, self.registry, self.log = config, user, registry, log
        self.vms: dict[int, RunningVM] = {}
        self.names: dict[int, str] = {}
        self._lock = threading.Lock()

    # The ad's VM, or the error code that tells HTCondor what to do (hold, or requeue).
    def describe(self, vmid: int, ad: JobAd) -> tuple[UniverseVM, Path, bool]:
        sandbox_text = ad.str("VM_WORKING_DIR") or os.environ.get("VMGAHP_WORKING_DIR")
        if not sandbox_text or not os.path.isabs(sandbox_text) or not os.path.isdir(sandbox_text):
            raise GahpError(ERR_NO_AD, f"no usable VM_WORKING_DIR ({sandbox_text!r})")
        sandbox = Path(os.path.realpath(sandbox_text))
        if (ad.str("JobVMType") or "").lower() != VM_TYPE:
            raise GahpError(ERR_VM_TYPE, f"JobVMType is {ad.raw('JobVMType')!r}, not kvm")
        memory = ad.int("JobVMMemory")
        if memory is None or memory <= 0:
            raise GahpError(
                ERR_NO_MEMORY,
                f"JobVMMemory is {ad.raw('JobVMMemory') or 'missing'}: give vm_memory in MiB",
            )
        if self.config.max_memory_mib and memory > self.config.max_memory_mib:
            raise GahpError(
                ERR_TOO_MUCH_MEMORY,
                f"{memory} MiB asked, VM_MEMORY is {self.config.max_memory_mib}",
            )
        cpus = ad.int("JobVM_VCPUS") or ad.int("RequestCpus") or 1
        cpus = max(1, cpus)
        network, mac = "none", None
        notes = []
        if ad.bool("JobVMNetworking"):
            if not self.config.networking:
                raise GahpError(ERR_NETWORKING, "the job asks for networking; VM_NETWORKING is off")
            kind = (ad.str("JobVMNetworkingType") or self.config.default_networking_type).lower()
            if kind not in self.config.networking_types:
                raise GahpError(
                    ERR_NETWORKING_TYPE, f"networking type {kind!r}: this helper offers nat only"
                )
            network = "user"
            mac = ad.str("JobVM_MACADDR")
            if mac and not MAC_RE.match(mac):
                notes.append(f"JobVM_MACADDR {mac!r} is not a MAC address: qemu picks one")
                mac = None
        disk_text = ad.str("VMPARAM_vm_Disk")
        if disk_text is None:
            raise GahpError(ERR_NO_DISK, "the job names no vm_disk")
        try:
            disks = check_disks(parse_vm_disk(disk_text, sandbox), self.user)
        except DiskSpecError as exc:
            raise GahpError(ERR_BAD_DISK, f"vm_disk = {disk_text}: {exc}") from None
        except OSError as exc:
            raise GahpError(
                ERR_CRITICAL, f"cannot check the disks as the job's user: {exc}"
            ) from None
        for attr, what in (
            ("JobVMVNCConsole", "vm_vnc: no VNC console (the serial console is kept instead)"),
            ("JobVMCheckpoint", "vm_checkpoint: no checkpoints (a vacated VM starts again)"),
            ("JobVMHardwareVT", "vm_hardware_vt: KVM is used where it works, else TCG"),
        ):
            if ad.bool(attr):
                notes.append(f"not implemented, ignored: {what}")
        if ad.str("VMPARAM_Bridge_Interface"):
            notes.append("not implemented, ignored: bridge networking (nat only)")
        wall = ad.int(WALL_ATTR)
        name = vm_name(ad)
        if name is None:
            raise GahpError(ERR_CRITICAL, "the job ad lacks User, ClusterId or ProcId")
        if vmid > 1:
            name = f"{name}-vm{vmid}"
        vm = UniverseVM(
            name=name,
            disks=disks,
            memory_mib=memory,
            cpus=cpus,
            network=network,
            mac=mac,
            console=sandbox / CONSOLE_FILE,
            wall_timeout_s=wall if wall and wall > 0 else None,
            notes=notes,
        )
        return vm, sandbox, ad.bool("VMPARAM_No_Output_VM")

    def accelerator(self) -> str:
        forced = self.config.accel
        if forced in ("kvm", "tcg"):
            os.environ[ACCEL_ENV] = forced
        else:
            os.environ.pop(ACCEL_ENV, None)
        kernel = self.config.probe_kernel
        if kernel is not None and not kernel.is_file():
            self.log(f"the probe kernel {kernel} does not exist (VMHARNESS_VM_GAHP_PROBE_KERNEL)")
            kernel = None
        accel = choose_accelerator(kernel, self.registry.root / "accel", say=self.log)
        if accel == "kvm":
            answer = as_user(self.user, [{"do": "access", "path": "/dev/kvm"}])[0]
            if not answer.get("ok"):
                self.log(
                    f"accelerator tcg: the job's user {self.user.name} may not use /dev/kvm "
                    "(add it to /dev/kvm's group to run its VMs under KVM)"
                )
                accel = "tcg"
        return accel

    def start(self, vmid: int, ad: JobAd) -> None:
        vm, sandbox, no_output = self.describe(vmid, ad)
        for note in vm.notes:
            self.log(f"{vm.name}: {note}")
        limit = _cgroup_memory_limit()
        need = (vm.memory_mib + QEMU_OVERHEAD_MIB) << 20
        if limit is not None and limit < need:
            self.log(
                f"{vm.name}: warning: the job's cgroup allows {limit >> 20} MiB, the guest "
                f"alone takes {vm.memory_mib} MiB plus qemu's own: the kernel may kill qemu. "
                "Ask request_memory >= vm_memory + 256, or see docs/condor.md (memory)"
            )
        self.registry.ensure()
        self.registry.sweep()
        accel = self.accelerator()
        self.log(
            f"{vm.name}: starting as {self.user.name} (uid {self.user.uid}) in {sandbox}: "
            f"{vm.memory_mib} MiB, {vm.cpus} vCPU, network {vm.network}, accelerator {accel}, "
            "disks "
            + ", ".join(
                f"{d.path}:{d.device}:{'w' if d.writable else 'r'}:{d.fmt}"
                + (" (CD-ROM)" if d.cdrom else "")
                for d in vm.disks
            )
            + (f", stopped after {vm.wall_timeout_s}s" if vm.wall_timeout_s else "")
        )
        me = {"helper_pid": os.getpid(), "helper_start": _start_time(os.getpid())}
        for stale in self.registry.entries():  # an earlier run's VM of this job, never stopped
            if stale["name"] == vm.name:
                self.log(f"{vm.name}: stopping a VM of an earlier run of this job")
                self.registry.kill(stale)
        self.registry.record(vm.name, uid=self.user.uid, sandbox=str(sandbox), **me)
        sandbox_disks = [d for d in vm.disks if d.path.parent == sandbox]

        def on_end(running: RunningVM, outcome: VMOutcome) -> None:
            self._ended(running, outcome, sandbox, sandbox_disks, no_output)

        running = RunningVM(
            vm, self.user, accel, self.registry.workdir(vm.name), on_end=on_end, log=self.log
        )
        try:
            running.start()
        except StartFailed as exc:
            self.registry.forget(vm.name)
            code = ERR_BAD_IMAGE if exc.bad_image else ERR_CRITICAL
            raise GahpError(code, str(exc)) from None
        except Exception as exc:
            self.registry.forget(vm.name)
            raise GahpError(ERR_CRITICAL, f"{type(exc).__name__}: {exc}") from None
        if running.proc is not None and running.running:
            self.registry.record(
                vm.name,
                uid=self.user.uid,
                sandbox=str(sandbox),
                qemu_pid=running.pid,
                qemu_start=_start_time(running.pid),
                started_at=time.time(),
                **me,
            )
        with self._lock:
            self.vms[vmid] = running
            self.names[vmid] = vm.name
        self.log(f"{vm.name}: running, qemu pid {running.pid} (VM id {vmid})")

    def _ended(
        self,
        running: RunningVM,
        outcome: VMOutcome,
        sandbox: Path,
        sandbox_disks: list,
        no_output: bool,
    ) -> None:
        """Once qemu is gone, before STATUS says Stopped: the written disks get a new mtime (so
        file transfer sends them back), outcome.json says how it ended, the registry forgets."""
        name = running.vm.name
        outcome.host = os.uname().nodename
        outcome.exit_code = running.proc.returncode if running.proc is not None else None
        stderr = running.workdir / "qemu-stderr.log"
        tail = ""
        with contextlib.suppress(OSError):
            tail = " | ".join(stderr.read_text(errors="replace").strip().splitlines()[-3:])
        self.log(
            f"{name}: ended ({outcome.ended}) after {outcome.seconds:.1f}s, qemu exit code "
            f"{outcome.exit_code}{': ' + outcome.reason if outcome.reason else ''}"
            + (f"; qemu said: {tail}" if tail and outcome.ended != "poweroff" else "")
        )
        actions: list[dict[str, Any]] = [
            {"do": "touch", "path": str(d.path)} for d in sandbox_disks if d.writable
        ]
        actions.append(
            {"do": "write", "path": str(sandbox / OUTCOME_FILE), "text": to_text(OUTCOME, outcome)}
        )
        if no_output:
            actions += [{"do": "remove", "path": str(d.path)} for d in sandbox_disks]
        try:
            for action, answer in zip(actions, as_user(self.user, actions), strict=True):
                if "error" in answer:
                    self.log(f"{name}: {action['do']} {action['path']}: {answer['error']}")
        except OSError as exc:
            self.log(f"{name}: could not finish the sandbox as the job's user: {exc}")
        self.registry.forget(name)

    def status(self, vmid: int) -> str | None:
        with self._lock:
            running = self.vms.get(vmid)
        if running is None:
            return None
        return "Running" if running.running else "Stopped"

    def known(self, vmid: int) -> bool:
        with self._lock:
            return vmid in self.vms

    def stop(self, vmid: int) -> bool:
        with self._lock:
            running = self.vms.pop(vmid, None)
        if running is None:
            return False
        self.log(f"{running.vm.name}: stopping (CONDOR_VM_STOP)")
        running.stop()
        return True

    def quit(self) -> None:
        with self._lock:
            running = list(self.vms.values())
            self.vms.clear()
        for vm in running:
            if vm.running:
                self.log(f"{vm.vm.name}: stopping (the helper is quitting)")
            vm.stop()


# -- the protocol -------------------------------------------------------------------------------
class Server:
    """One job's session with the starter: reads commands, writes replies, runs requests."""

    def __init__(self, out: IO[bytes], backend: Backend, log: Callable[[str], None]) -> None:
        self.out, self.backend, self.log = out, backend, log
        self.results: list[str] = []
        self.pending: set[int] = set()  # request ids whose result is not yet queued
        self.async_mode = False
        self.signaled = False
        self.ad: JobAd | None = None
        self.reading_ad: JobAd | None = None
        self.next_vmid = 0
        self.quitting = False
        self._lock = threading.RLock()
        self._workers: list[threading.Thread] = []

    def write(self, line: str) -> None:
        with self._lock:
            self.out.write(line.encode() + b"\n")
            self.out.flush()

    def reply(self, *tokens: str) -> None:
        self.write(reply_line(list(tokens)))

    def queue(self, reqid: int, ok: bool, *result: str) -> None:
        tokens = [str(reqid), "0" if ok else "1", *(result or ("NULL",))]
        with self._lock:
            self.results.append(reply_line(tokens))
            self.pending.discard(reqid)
            if self.async_mode and not self.signaled:
                self.signaled = True
                self.write("R")

    def banner(self) -> None:
        self.write(BANNER)

    def handle(self, line: str) -> None:
        """One line from the starter."""
        if self.reading_ad is not None:
            if line.strip().upper() == "CLASSAD_END":
                self.ad, self.reading_ad = self.reading_ad, None
                self.reply("S")
            elif line.strip() and not self.reading_ad.add_line(line):
                self.log(f"job ad: ignoring a line that is not `Name = value`: {line[:200]!r}")
            return
        args = split_command(line)
        cmd = args[0].upper()
        if cmd in PLAIN_COMMANDS:
            if len(args) != 1:
                return self._malformed(line, "takes no arguments")
            return self._plain(cmd)
        if cmd not in VM_COMMANDS:
            return self._malformed(line, "unknown command")
        if len(args) != 3 or not args[1].isdigit() or not args[2]:
            return self._malformed(line, "wants <request id> and one argument")
        reqid = int(args[1])
        with self._lock:
            if reqid <= 0 or reqid in self.pending:
                return self._malformed(line, "request id not positive or already pending")
        if cmd == "CONDOR_VM_START":
            if args[2].lower() != VM_TYPE:
                return self._malformed(line, f"VM type {args[2]!r}: only kvm")
        elif not args[2].isdigit():
            return self._malformed(line, "the VM id is not a number")
        with self._lock:
            self.pending.add(reqid)
        self.reply("S")
        self._request(cmd, reqid, args[2])

    def _malformed(self, line: str, why: str) -> None:
        self.log(f"E for {line.strip()[:200]!r}: {why}")
        self.reply("E")

    def _plain(self, cmd: str) -> None:
        if cmd == "VERSION":
            self.write(f"S {BANNER}")
        elif cmd == "COMMANDS":
            self.reply("S", *COMMANDS)
        elif cmd == "SUPPORT_VMS":
            self.reply("S", VM_TYPE)
        elif cmd == "ASYNC_MODE_ON":
            with self._lock:
                self.async_mode, self.signaled = True, False
                self.reply("S")
        elif cmd == "ASYNC_MODE_OFF":
            with self._lock:
                self.async_mode = False
                self.reply("S")
        elif cmd == "RESULTS":
            with self._lock:
                results, self.results = self.results, []
                self.write(f"S {len(results)}")
                for line in results:
                    self.write(line)
                self.signaled = False
        elif cmd == "CLASSAD":
            self.reading_ad = JobAd()
            self.reply("S")
        elif cmd == "CLASSAD_END":
            self._malformed(cmd, "CLASSAD_END without CLASSAD")
        elif cmd == "QUIT":
            self.quit()
            self.reply("S")

    def _request(self, cmd: str, reqid: int, arg: str) -> None:
        if cmd == "CONDOR_VM_START":
            ad = self.ad
            if ad is None:
                self.queue(reqid, False, ERR_NO_AD)
                return
            with self._lock:
                self.next_vmid += 1
                vmid = self.next_vmid
            self._worker(self._start, reqid, vmid, ad)
            return
        vmid = int(arg)
        if cmd == "CONDOR_VM_STATUS":
            state = self.backend.status(vmid)
            self.queue(reqid, True, f"STATUS={state or 'Stopped'}")
        elif cmd == "CONDOR_VM_GETPID":
            # 0: HTCondor then measures the helper's process family (qemu is in it) and does
            # not count qemu a second time
            if self.backend.known(vmid):
                self.queue(reqid, True, "0")
            else:
                self.queue(reqid, False, ERR_NOT_FOUND)
        elif cmd == "CONDOR_VM_STOP":
            self._worker(self._stop, reqid, vmid)
        elif cmd in ("CONDOR_VM_SUSPEND", "CONDOR_VM_SOFT_SUSPEND", "CONDOR_VM_RESUME"):
            known = self.backend.known(vmid)
            self.queue(reqid, False, ERR_NO_SUSPEND if known else ERR_NOT_FOUND)
        elif cmd == "CONDOR_VM_CHECKPOINT":
            known = self.backend.known(vmid)
            self.queue(reqid, False, ERR_NO_CHECKPOINT if known else ERR_NOT_FOUND)

    def _worker(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._workers.append(thread)
        thread.start()

    def _start(self, reqid: int, vmid: int, ad: JobAd) -> None:
        try:
            self.backend.start(vmid, ad)
        except GahpError as exc:
            held = " (HTCondor holds the job)" if exc.code in HOLDING_ERRORS else ""
            self.log(f"CONDOR_VM_START failed: {exc.code}{held}: {exc.detail}")
            self.queue(reqid, False, exc.code)
            return
        except Exception as exc:  # noqa: BLE001 - never a traceback for the starter
            self.log(f"CONDOR_VM_START failed: {type(exc).__name__}: {exc}")
            self.queue(reqid, False, ERR_INTERNAL)
            return
        self.queue(reqid, True, str(vmid))

    def _stop(self, reqid: int, vmid: int) -> None:
        try:
            found = self.backend.stop(vmid)
        except Exception as exc:  # noqa: BLE001
            self.log(f"CONDOR_VM_STOP {vmid} failed: {type(exc).__name__}: {exc}")
            self.queue(reqid, False, ERR_INTERNAL)
            return
        if found:
            self.queue(reqid, True)
        else:
            self.queue(reqid, False, ERR_NOT_FOUND)

    def quit(self) -> None:
        self.quitting = True
        try:
            self.backend.quit()
        except Exception as exc:  # noqa: BLE001
            self.log(f"stopping the VMs failed: {type(exc).__name__}: {exc}")

    def serve(self, inp: IO[bytes]) -> int:
        """Until QUIT or the end of stdin (the starter went away): then every VM stops."""
        self.banner()
        try:
            while not self.quitting:
                raw = inp.readline(MAX_INPUT_LINE)
                if not raw:
                    self.log("stdin closed: stopping every VM and exiting")
                    break
                if not raw.endswith(b"\n"):
                    while (more := inp.readline(MAX_INPUT_LINE)) and not more.endswith(b"\n"):
                        pass
                    if self.reading_ad is None:
                        self._malformed(raw[:80].decode(errors="replace"), "line too long")
                    else:
                        self.log("job ad: ignoring a line longer than 1 MiB")
                    continue
                self.handle(raw.decode(errors="replace").rstrip("\r\n"))
        finally:
            if not self.quitting:
                self.quit()
        return 0


# -- the modes ----------------------------------------------------------------------------------
def discovery(config: GahpConfig, out: IO[str], log: Callable[[str], None]) -> int:
    """-M 0: what the startd advertises. Nothing where this machine cannot run VMs."""
    for note in config.notes:
        log(note)
    if config.vm_type != VM_TYPE:
        log(f"VM_TYPE is {config.vm_type!r}: this helper runs kvm only")
        return 1
    if not shutil.which(QEMU):
        log(f"{QEMU} is not installed: no VM universe here (apt-get install qemu-system-x86)")
        return 1
    if config.max_memory_mib <= 0:
        log("no memory for VMs (VM_MEMORY): no VM universe here")
        return 1
    with contextlib.suppress(GahpError, OSError):
        swept = Registry(config.registry, log).sweep()
        if swept:
            log(f"cleaned up {swept} VM(s) left by helpers that are gone")
    lines = [
        f'VM_GAHP_VERSION = "{GAHP_VERSION}"',
        f'VM_Type = "{VM_TYPE}"',
        f"VM_Memory = {config.max_memory_mib}",
        f"VM_Networking = {'TRUE' if config.networking else 'FALSE'}",
    ]
    if config.networking:
        lines.append(f'VM_Networking_Types = "{",".join(config.networking_types)}"')
    lines.append(f'{MARKER_ATTR} = "{__version__}"')
    out.write("".join(line + "\n" for line in lines))
    out.flush()
    log(
        f"VM universe offered: kvm (qemu), {config.max_memory_mib} MiB, networking "
        f"{'nat' if config.networking else 'off'}"
    )
    return 0


def kill_mode(config: GahpConfig, match: str, log: Callable[[str], None]) -> int:
    registry = Registry(config.registry, log)
    try:
        killed = registry.kill_matching(match)
        registry.sweep()
    except (GahpError, OSError) as exc:
        log(f"kill {match}: {exc}")
        return 1
    if not killed:
        log(f"kill {match}: no running VM of that name")
    return 0


def job_mode(config: GahpConfig, log: Callable[[str], None]) -> int:
    for note in config.notes:
        log(note)
    try:
        uid = int(os.environ.get("VMGAHP_USER_UID", ""))
        gid_text = os.environ.get("VMGAHP_USER_GID")
        gid = int(gid_text) if gid_text else None
    except ValueError:
        uid, gid = -1, None
    if uid <= 0:
        log("VMGAHP_USER_UID is missing or root: HTCondor sets it to the job's user; exiting")
        return 1
    user = JobUser.from_ids(uid, gid)
    registry = Registry(config.registry, log)
    with contextlib.suppress(GahpError, OSError):
        registry.sweep()
    backend = QemuBackend(config, user, registry, log)
    server = Server(sys.stdout.buffer, backend, log)

    def stop(signum: int, _frame: Any) -> None:
        log(f"signal {signum}: stopping every VM and exiting")
        raise SystemExit(0)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, stop)
    log(f"job mode for {user.name} (uid {user.uid}) in {os.environ.get('VMGAHP_WORKING_DIR')}")
    try:
        return server.serve(sys.stdin.buffer)
    finally:
        if not server.quitting:
            server.quit()


USAGE = (
    "usage: vmharness-vm-gahp -f [-t] -M 0 vmtype kvm         (discovery)\n"
    "       vmharness-vm-gahp -f [-t] -M 3                    (one job: the protocol)\n"
    "       vmharness-vm-gahp -f [-t] -M 4 vmtype kvm match NAME  (kill a job's VM)\n"
    "HTCondor runs it as root when VM_GAHP_SERVER names it; see docs/condor.md."
)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    to_terminal, mode, vmtype, match = False, None, None, None
    i = 0
    try:
        while i < len(args):
            a = args[i]
            if a == "-f":
                pass
            elif a == "-t":
                to_terminal = True
            elif a == "-M":
                i += 1
                mode = int(args[i])
            elif a == "vmtype":
                i += 1
                vmtype = args[i]
            elif a == "match":
                i += 1
                match = args[i]
            else:
                raise ValueError(a)
            i += 1
    except (IndexError, ValueError):
        print(USAGE, file=sys.stderr)
        return 1
    if mode not in (0, 3, 4) or (mode == 0 and not vmtype) or (mode == 4 and not match):
        print(USAGE, file=sys.stderr)
        return 1
    config = GahpConfig.load()
    name = {0: "discovery", 3: "job", 4: "kill"}[mode]
    log = Log(name, sys.stderr, None if to_terminal else config.log_file)
    if mode in (0, 4) and (vmtype or "").lower() != VM_TYPE:
        log(f"vm type {vmtype!r}: this helper runs kvm only")
        return 1
    if os.geteuid() != 0:
        log("not running as root: HTCondor runs VM universe helpers as root; nothing done")
        return 1
    try:
        if mode == 0:
            return discovery(config, sys.stdout, log)
        if mode == 4:
            return kill_mode(config, match or "", log)
        return job_mode(config, log)
    except SystemExit:
        raise
    except BaseException as exc:  # the starter must never see a traceback on stdout
        log(f"internal error: {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
