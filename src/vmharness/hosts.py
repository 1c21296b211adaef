"""The execute-host deny-list: bad execute points, found from the runs that died on them.

A run that ends `died` (an infrastructure failure, never a test failure) on an execute point
counts against that host; a run that reached any verdict on it counts for it. When a host has
`Policy.consecutive` infrastructure failures in a row (default 2), or, with a window set, a
share of failures of at least `Policy.rate` among its last `Policy.window` runs, it is denied
until `expires`. After that it gets a trial: the next run on it decides, a success clears the
entry, a failure denies it again at once.

The list is one JSON document (wire/formats.py HOSTS) beside the image cache
(`<cache root>/hosts.json`, or $VMHARNESS_HOSTS_FILE), so it outlives a matrix: tomorrow's
nightly run starts by avoiding what failed today. Several POST scripts of a DAG update it at
once: every change is made under an exclusive lock (`hosts.json.lock`) and written atomically.
Hosts are named as the pool names them (a startd's `Machine`), which is what a job's
requirements compare with.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError, VmharnessError
from .images.cache import default_cache_root
from .spec.units import parse_duration
from .wire.codec import WireError, read_document, to_text, write_document
from .wire.formats import HOSTS

HOSTS_FILE_ENV = "VMHARNESS_HOSTS_FILE"
POLICY_ENV = "VMHARNESS_DENY"  # e.g. "after=2,rate=0.5,window=10,expiry=24h"
KEEP_FAILURES = 20  # runs that died on a host, kept in its entry
DEFAULT_EXPIRY_S = 24 * 3600


def default_path() -> Path:
    env = os.environ.get(HOSTS_FILE_ENV)
    return Path(env) if env else default_cache_root() / "hosts.json"


@dataclass(frozen=True)
class Policy:
    """When a host is denied, and for how long."""

    consecutive: int = 2  # infrastructure failures in a row (0: off)
    window: int = 0  # the last N runs on the host (0: no rate rule)
    rate: float = 0.5  # share of failures among them that denies the host
    expiry_s: float = DEFAULT_EXPIRY_S

    @classmethod
    def parse(cls, text: str) -> Policy:
        """'after=2,rate=0.5,window=10,expiry=24h' (any subset; empty: the defaults)."""
        values: dict[str, float | int] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, _, value = part.partition("=")
            try:
                if key == "after":
                    values["consecutive"] = int(value)
                elif key == "window":
                    values["window"] = int(value)
                elif key == "rate":
                    values["rate"] = float(value)
                elif key == "expiry":
                    values["expiry_s"] = parse_duration(value)
                else:
                    raise ValueError(key)
            except (ValueError, VmharnessError):
                raise UsageError(
                    f"the deny-list policy {text!r} (--deny-policy or {POLICY_ENV}) has a bad "
                    f"part {part!r}",
                    hint="write e.g. after=2,rate=0.5,window=10,expiry=24h "
                    "(after: failures in a row; rate over the last `window` runs)",
                ) from None
        policy = cls(**values)  # type: ignore[arg-type]
        if policy.consecutive < 0 or policy.window < 0 or not 0 < policy.rate <= 1:
            raise UsageError(
                f"the deny-list policy {text!r} (--deny-policy or {POLICY_ENV}) is out of range",
                hint="after >= 0, window >= 0, 0 < rate <= 1",
            )
        return policy

    @classmethod
    def from_env(cls) -> Policy:
        return cls.parse(os.environ.get(POLICY_ENV, ""))

    def describe(self) -> str:
        rules = []
        if self.consecutive:
            rules.append(f"{self.consecutive} infrastructure failures in a row")
        if self.window:
            rules.append(f"{self.rate:.0%} of the last {self.window} runs failing")
        return " or ".join(rules) or "never"


@dataclass
class Failure:
    """One run that died on a host."""

    run: str
    reason: str
    when: float
    run_dir: str = ""


@dataclass
class HostEntry:
    """What is known of one execute host."""

    host: str
    recent: list[bool] = field(default_factory=list)  # True: an infrastructure failure
    failures: list[Failure] = field(default_factory=list)
    denied_since: float | None = None
    expires: float | None = None
    reason: str = ""

    def state(self, now: float) -> str:
        """ok | denied | trial (denied, expired: the next run on it decides)."""
        if self.denied_since is None:
            return "ok"
        return "denied" if self.expires is None or now < self.expires else "trial"

    def streak(self) -> int:
        n = 0
        for failed in reversed(self.recent):
            if not failed:
                break
            n += 1
        return n


@dataclass
class HostsFile:
    hosts: dict[str, HostEntry] = field(default_factory=dict)


class DenyList:
    """The deny-list file. `DenyList.locked(path)` for changes; `DenyList.read(path)` to look."""

    def __init__(self, path: Path, data: HostsFile, policy: Policy) -> None:
        self.path = path
        self.data = data
        self.policy = policy

    @classmethod
    def read(cls, path: Path | None = None, policy: Policy | None = None) -> DenyList:
        path = path or default_path()
        try:
            data = read_document(path, HOSTS, HostsFile)
        except FileNotFoundError:
            data = HostsFile()
        except (OSError, WireError) as exc:
            raise UsageError(
                f"the execute-host deny-list {path} cannot be read: {exc}",
                hint=f"move it away (it is made again, empty) or set {HOSTS_FILE_ENV}",
            ) from None
        return cls(path, data, policy or Policy.from_env())

    @classmethod
    @contextlib.contextmanager
    def locked(cls, path: Path | None = None, policy: Policy | None = None) -> Iterator[DenyList]:
        """Read, let the caller change, write back: one process at a time."""
        path = path or default_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = path.with_name(path.name + ".lock")
        with open(lock, "a") as f:
            _share_with_folder(lock)
            fcntl.flock(f, fcntl.LOCK_EX)
            deny = cls.read(path, policy)
            before = write_document_text(deny.data)
            yield deny
            if write_document_text(deny.data) != before:
                write_document(path, HOSTS, deny.data)
                _share_with_folder(path)

    # -- questions ---------------------------------------------------------------------------
    def entries(self) -> list[HostEntry]:
        return sorted(self.data.hosts.values(), key=lambda e: e.host)

    def denied(self, now: float | None = None) -> list[str]:
        """Hosts no job may go to now (expired entries are on trial: allowed again)."""
        now = time.time() if now is None else now
        return sorted(h for h, e in self.data.hosts.items() if e.state(now) == "denied")

    # -- changes -----------------------------------------------------------------------------
    def record(
        self,
        host: str,
        *,
        failed: bool,
        run: str,
        reason: str = "",
        run_dir: str = "",
        now: float | None = None,
    ) -> str:
        """Count one run's end on `host`. Returns what changed: "denied", "cleared" or ""."""
        now = time.time() if now is None else now
        if not host:
            return ""
        entry = self.data.hosts.get(host)
        if entry is None:
            if not failed:
                return ""  # a good host with no history: nothing worth keeping
            entry = self.data.hosts[host] = HostEntry(host=host)
        state = entry.state(now)
        if not failed:
            if state == "trial":
                del self.data.hosts[host]  # the trial run passed: forgiven
                return "cleared"
            entry.recent = (entry.recent + [False])[-self._keep() :]
            if state == "ok" and not any(entry.recent):
                del self.data.hosts[host]
            return ""
        entry.recent = (entry.recent + [True])[-self._keep() :]
        entry.failures = (
            entry.failures + [Failure(run=run, reason=reason[:500], when=now, run_dir=run_dir)]
        )[-KEEP_FAILURES:]
        if state == "denied":
            return ""
        why = self._verdict(entry)
        if state == "trial":
            why = "its trial run after the deny-list entry expired died too"
        if not why:
            return ""
        entry.denied_since = now
        entry.expires = now + self.policy.expiry_s
        entry.reason = f"{why}; last: {reason[:300]}" if reason else why
        return "denied"

    def forgive(self, host: str) -> bool:
        return self.data.hosts.pop(host, None) is not None

    def _keep(self) -> int:
        return max(self.policy.consecutive, self.policy.window, 1)

    def _verdict(self, entry: HostEntry) -> str:
        p = self.policy
        if p.consecutive and entry.streak() >= p.consecutive:
            return f"{entry.streak()} infrastructure failures in a row"
        if p.window and len(entry.recent) >= p.window:
            last = entry.recent[-p.window :]
            if sum(last) / p.window >= p.rate:
                return f"{sum(last)} of its last {p.window} runs died"
        return ""


def write_document_text(data: HostsFile) -> str:
    return to_text(HOSTS, data)


def _share_with_folder(path: Path) -> None:
    """Files root writes (`vmharness hosts forgive`) stay writable by the folder's owner (the
    pool's account, whose POST scripts update the list)."""
    if os.geteuid() != 0:
        return
    with contextlib.suppress(OSError):
        st = path.parent.stat()
        os.chown(path, st.st_uid, st.st_gid)


def classad_list(hosts: list[str]) -> str:
    """'{"a", "b"}': a ClassAd list literal of host names."""
    quoted = ('"' + h.replace("\\", "\\\\").replace('"', '\\"') + '"' for h in hosts)
    return "{" + ", ".join(quoted) + "}"
