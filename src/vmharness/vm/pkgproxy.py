"""The package cache: one caching apt proxy (apt-cacher-ng) for every local VM.

Every run that installs packages fetches the same package lists and the same .debs; through
this proxy a matrix fetches each from the mirror once, and later runs and matrices not at all.
It is Debian's apt-cacher-ng, run by vmharness as its own process (not the system service, which
it neither needs nor touches), with its configuration, cache and logs in one folder under the
vmharness cache (`<cache>/package-cache/`), listening on 127.0.0.1 only: qemu's user networking
forwards the guest's 10.0.2.2 (the host, as the guest sees it) there, and nothing else reaches it.

Index files (InRelease, Release, Packages) are revalidated with the mirror on every request
(`FreshIndexMaxAge: 0`), so a package published a minute ago is seen; .debs are immutable and
served from the cache. apt in the guest still checks every signature and hash: the proxy only
stores what the mirror sent.

The cache has a size limit (`vmharness run --package-cache-max`, 10G by default): when a
vmharness starts the proxy and the cache holds more, the files used least recently go until it
holds 80% of the limit: superseded packages, and index files a mirror no longer names (its
`by-hash/` files, one more at each publication, are never asked for again). "Used" is the
file's access time where the filesystem keeps it (relatime: to about a day), else the time it
was fetched. A removed file is fetched again when a run asks for it.

Several vmharness processes share one proxy: each holds a shared lock on `users.lock` while it
runs; the last to leave stops it (by the pid it recorded, after checking that the process is
the proxy of this folder).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..wire.guest import GUEST_HOST_ADDRESS

PROGRAM = "apt-cacher-ng"
FOLDER = "package-cache"  # under the vmharness cache root
START_TIMEOUT_S = 15
STOP_TIMEOUT_S = 10
ANSWER_WAIT_S = 10  # how long a running proxy of ours may take to accept a connection
MAX_ENV = "VMHARNESS_PACKAGE_CACHE_MAX"
DEFAULT_MAX = "10G"
DEFAULT_MAX_BYTES = 10 * 1024**3
TRIM_TO = 0.8  # of the limit, so that a cache at its limit is not trimmed at every start
# apt-cacher-ng keeps each file's headers beside it as NAME.head, and its own records in
# top-level folders whose names start with "_" (never trimmed).
HEAD_SUFFIX = ".head"
OWN_RECORDS_PREFIX = "_"
INSTALL_HINT = (
    "install it (sudo apt-get install apt-cacher-ng, or `make setup`) to cache packages for "
    "every VM; runs fetch from the mirrors directly meanwhile"
)


class ProxyUnavailable(Exception):
    """The package cache cannot be started here; the message says why and what to do."""


@dataclass(frozen=True)
class Trimmed:
    """What a start found in the cache and removed to keep it under its limit."""

    size_before: int
    files: int = 0
    removed: int = 0  # bytes

    @property
    def size_after(self) -> int:
        return self.size_before - self.removed


@dataclass(frozen=True)
class ProxyInfo:
    pid: int
    port: int

    @property
    def host_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def guest_url(self) -> str:
        """The proxy as a guest on qemu user networking reaches it."""
        return f"http://{GUEST_HOST_ADDRESS}:{self.port}"


def config_text(folder: Path, port: int) -> str:
    """apt-cacher-ng's whole configuration: nothing of /etc/apt-cacher-ng is read."""
    return "\n".join(
        [
            "# written by vmharness: its own apt-cacher-ng for local VMs (see README)",
            f"CacheDir: {folder / 'data'}",
            f"LogDir: {folder / 'log'}",
            f"PidFile: {folder / 'run' / 'pid'}",
            f"SocketPath: {folder / 'run' / 'socket'}",
            "SupportDir: /usr/lib/apt-cacher-ng",
            f"Port: {port}",
            # Where qemu's user networking delivers the guest's 10.0.2.2, and nowhere else.
            "BindAddress: 127.0.0.1",
            "ForeGround: 1",
            # Index files are always revalidated: never a stale list (a package published
            # after the last run is seen).
            "FreshIndexMaxAge: 0",
            # Repositories on any port (a test's or a team's own repository server).
            "AllowUserPorts: 0",
            "ExThreshold: 4",
            "VerboseLog: 1",
            "UnbufferLogs: 1",
            "ReportPage: acng-report.html",
            "",
        ]
    )


class PackageProxy:
    """The package cache of one vmharness cache folder."""

    def __init__(
        self, cache_root: Path, program: str = PROGRAM, max_bytes: int = DEFAULT_MAX_BYTES
    ):
        self.folder = cache_root / FOLDER
        self.program = program
        self.max_bytes = max_bytes
        self.trimmed: Trimmed | None = None  # set by a start that started the proxy
        self._users: IO[str] | None = None
        self.info: ProxyInfo | None = None

    # -- paths ---------------------------------------------------------------------------
    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def access_log(self) -> Path:
        return self.folder / "log" / "apt-cacher.log"

    def _state_file(self) -> Path:
        return self.folder / "run" / "state.json"

    # -- start / stop --------------------------------------------------------------------
    def start(self) -> ProxyInfo:
        """Start the proxy, or join the one already running for this cache; held until
        `release`. Raises ProxyUnavailable with the reason and what to do."""
        exe = shutil.which(self.program)
        if exe is None:
            raise ProxyUnavailable(f"{self.program} is not installed: {INSTALL_HINT}")
        for sub in ("data", "log", "run", "conf"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        with self._lock("start.lock"):
            info = self._running()
            if info is None:  # nothing serves from the cache now: it may be trimmed
                self.trimmed = self.trim(self.max_bytes)
                info = self._spawn(exe)
            users = open(self.folder / "run" / "users.lock", "a")  # noqa: SIM115 (held)
            fcntl.flock(users, fcntl.LOCK_SH)
            self._users = users
        self.info = info
        return info

    def release(self) -> bool:
        """Leave the proxy; the last user stops it. True if this call stopped it."""
        if self._users is None:
            return False
        self._users.close()  # drops the shared lock
        self._users = None
        with self._lock("start.lock"), open(self.folder / "run" / "users.lock", "a") as users:
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # another vmharness still uses it
            info = self._running()
            if info is None:
                return False
            self._stop(info.pid)
            self._state_file().unlink(missing_ok=True)
            return True

    def __enter__(self) -> ProxyInfo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.release()

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        with open(self.folder / "run" / name, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _running(self) -> ProxyInfo | None:
        """The proxy this folder's state names, if it is alive, ours and answering."""
        try:
            state = json.loads(self._state_file().read_text())
            info = ProxyInfo(pid=int(state["pid"]), port=int(state["port"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not self._is_ours(info.pid):
            return None
        deadline = time.monotonic() + ANSWER_WAIT_S
        while not _answers(info.port):  # a loaded machine can keep it a while
            if time.monotonic() > deadline:
                self._stop(info.pid)  # ours, but deaf: never two on one cache folder
                return None
            time.sleep(0.2)
        return info

    def _is_ours(self, pid: int) -> bool:
        """Whether PID is an apt-cacher-ng started with this folder's configuration."""
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        conf = str(self.folder / "conf").encode()
        return bool(argv) and PROGRAM.encode() in argv[0] and conf in argv

    def _spawn(self, exe: str) -> ProxyInfo:
        port = _free_port()
        (self.folder / "conf" / "acng.conf").write_text(config_text(self.folder, port))
        daemon_log = self.folder / "log" / "daemon.log"
        with open(daemon_log, "ab") as out:
            proc = subprocess.Popen(
                [exe, "-c", str(self.folder / "conf")],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives this process while other runs use it
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = daemon_log.read_text(errors="replace")[-600:].strip()
                raise ProxyUnavailable(
                    f"{self.program} exited {proc.returncode} at start ({tail or 'no output'}); "
                    f"see {daemon_log}"
                )
            if _answers(port):
                info = ProxyInfo(pid=proc.pid, port=port)
                self._state_file().write_text(json.dumps({"pid": proc.pid, "port": port}))
                return info
            time.sleep(0.1)
        self._stop(proc.pid)
        raise ProxyUnavailable(
            f"{self.program} did not answer on 127.0.0.1:{port} within {START_TIMEOUT_S}s; "
            f"see {daemon_log}"
        )

    def _stop(self, pid: int) -> None:
        if not self._is_ours(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline and self._is_ours(pid):
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            time.sleep(0.05)
        if self._is_ours(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):  # started by this process: reap it
            os.waitpid(pid, os.WNOHANG)

    # -- what it holds -------------------------------------------------------------------
    def size_bytes(self) -> int:
        total = 0
        for root, _dirs, files in os.walk(self.data):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(root, name)).st_size
        return total

    def trim(self, max_bytes: int) -> Trimmed:
        """If the cache holds more than MAX_BYTES, remove the files used least recently (each
        with its headers) until it holds TRIM_TO of it. Only while no proxy serves from it
        (start calls it under the start lock, before starting one). A file that cannot be
        removed is passed over: the cache stays usable, only bigger."""
        cached: list[tuple[float, int, str]] = []  # (last use, bytes with headers, path)
        total = 0
        for root, dirs, files in os.walk(self.data):
            if root == str(self.data):
                dirs[:] = [d for d in dirs if not d.startswith(OWN_RECORDS_PREFIX)]
            for name in files:
                path = os.path.join(root, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                total += st.st_size
                if name.endswith(HEAD_SUFFIX):
                    continue  # counted here, removed with its file
                head = 0
                with contextlib.suppress(OSError):
                    head = os.lstat(path + HEAD_SUFFIX).st_size
                cached.append((max(st.st_atime, st.st_mtime), st.st_size + head, path))
        if total <= max_bytes:
            return Trimmed(size_before=total)
        cached.sort()
        goal, removed, count = total - int(max_bytes * TRIM_TO), 0, 0
        for _used, size, path in cached:
            if removed >= goal:
                break
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError:
                continue  # e.g. a file another user made read-only to us
            with contextlib.suppress(OSError):
                os.unlink(path + HEAD_SUFFIX)
            removed += size
            count += 1
        return Trimmed(size_before=total, files=count, removed=removed)

    def clear(self) -> None:
        """Empty the cache (the proxy must not be running: ProxyUnavailable if it is)."""
        if self.folder.exists():
            with self._lock("start.lock"):
                if self._running() is not None:
                    raise ProxyUnavailable(
                        "the package cache is in use by a running vmharness; clear it when "
                        "no run is going"
                    )
                shutil.rmtree(self.data, ignore_errors=True)


# apt-cacher-ng 3.7 cannot bind a port of 32768 or more ("Error resolving address for
# binding"), which is where the kernel's ephemeral ports are: so a free one from a range of its
# own, from its usual 3142 up (the system service, if it runs, keeps 3142).
PORTS = range(3142, 3342)


def _free_port() -> int:
    for port in PORTS:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # As the proxy binds: connections of an earlier one in TIME_WAIT do not hold it.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ProxyUnavailable(
        f"no free port for the package cache on 127.0.0.1 between {PORTS.start} and "
        f"{PORTS.stop - 1}; stop what holds them, or run with --package-proxy none"
    )


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
