"""Getting results back: copy an output disk's files into the run's folder, safely.

The guest is untrusted. Every name is checked (no separators, no `..`, no control characters),
every file is created fresh with O_EXCL|O_NOFOLLOW inside a folder this code made itself, sizes
are capped per file and in total, and a corrupted filesystem ends in a reason, never a crash.

Nothing from the disk can stall or exhaust the host either: the reader claims each cluster for
one file or folder only and reads a chain only as far as a file's size needs (fatfs.py), the
whole extraction has a deadline, folders too deep or paths too long are skipped, and entries
are capped. Folders are read breadth first, so top-level files such as result.json are copied
before anything a deep or huge tree could spend the budget on. Whatever is not copied is listed
in `skipped` with the reason; `error` says when part of the disk could not be read.
"""

from __future__ import annotations

import os
import time
import unicodedata
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from .fatfs import ATTR_DIR, MAX_DEPTH, CorruptFilesystem, Entry, FatReader, OutOfTime

DEFAULT_FILE_LIMIT = 256 * 1024 * 1024
MAX_FILES = 20000
DEFAULT_DEADLINE_S = 10.0
DEADLINE_S_PER_64_MIB = 1.0  # plus this for a large disk: even a slow host copies 64 MiB/s
PATH_MAX = 4096  # Linux's, terminating NUL included
SHOWN_MAX = 300  # characters of a path as shown in `skipped`
REST = "(the rest of the disk)"


@dataclass
class Extraction:
    files: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path as shown, reason)
    bytes: int = 0
    error: str | None = None  # set when the disk, or a part of it, could not be read
    by_guest: bool = False  # the error is what the guest wrote (a corrupt FAT), not the host
    seconds: float = 0.0

    @property
    def readable(self) -> bool:
        return self.error is None or bool(self.files)


def default_deadline(disk_size: int) -> float:
    return DEFAULT_DEADLINE_S + DEADLINE_S_PER_64_MIB * disk_size / (64 << 20)


def extract(
    disk: Path,
    dest: Path,
    *,
    file_limit: int = DEFAULT_FILE_LIMIT,
    total_limit: int | None = None,
    deadline_s: float | None = None,
) -> Extraction:
    """Copy every regular file of the FAT output disk `disk` into `dest` (new folder).

    Never raises on what the disk holds. `total_limit` defaults to the disk's size, `deadline_s`
    to default_deadline(); on expiry, what was copied is kept and the rest listed as skipped.
    """
    t0 = time.monotonic()
    out = Extraction()
    dest.mkdir(parents=True, exist_ok=False)
    try:
        disk_size = disk.stat().st_size
        total_limit = total_limit if total_limit is not None else disk_size
        if deadline_s is None:
            deadline_s = default_deadline(disk_size)
        with open(disk, "rb") as f:
            reader = FatReader(f, disk_size, deadline=t0 + deadline_s)
            _Copier(reader, dest, out, file_limit, total_limit, deadline_s).run()
    except CorruptFilesystem as exc:
        out.error = f"output disk unreadable: {exc}"
        out.by_guest = True
    except OutOfTime:
        out.error = f"output disk not read within its {deadline_s:g}-second deadline"
    except OSError as exc:
        out.error = f"output disk unreadable: {exc}"
    except Exception as exc:  # a bug here must not cost the run its logs: keep what was copied
        out.error = f"output disk reader failed (a vmharness bug): {type(exc).__name__}: {exc}"
    out.seconds = time.monotonic() - t0
    return out


@dataclass
class _Folder:
    path: tuple[str, ...]  # raw names, as on the disk
    cluster: int | None  # None: the root
    skipped: str | None  # why it was not made on the host (its entries are then only listed)
    host: str  # its path on the host (made only if not skipped)
    host_bytes: int  # the length of that path, for PATH_MAX


class _Stop(Exception):
    """The rest of the disk is not read (too many entries)."""


class _Copier:
    def __init__(
        self,
        reader: FatReader,
        dest: Path,
        out: Extraction,
        file_limit: int,
        total_limit: int,
        deadline_s: float,
    ) -> None:
        self.reader, self.dest, self.out = reader, dest, out
        self.file_limit, self.total_limit, self.deadline_s = file_limit, total_limit, deadline_s
        self.entries = 0
        self.problems: list[str] = []  # parts of the disk not read; the first becomes `error`

    def run(self) -> None:
        # Breadth first: a folder's files are copied as its entries are read, its subfolders
        # wait their turn, so nothing nested can starve the top level.
        top = os.path.abspath(self.dest)
        queue = deque([_Folder((), None, None, top, len(_host_bytes(top)))])
        try:
            self.reader.check_time()
            while queue:
                self._read_folder(queue.popleft(), queue)
        except _Stop as exc:
            self.out.skipped.append((REST, f"not read: {exc}"))
            self.problems.append(str(exc))
        except OutOfTime:
            why = f"extraction stopped at its {self.deadline_s:g}-second deadline"
            self.out.skipped.append((REST, f"not read: {why}"))
            self.problems.append(why)
        if self.problems and self.out.error is None:
            more = len(self.problems) - 1
            self.out.error = self.problems[0] + (
                f" (and {more} more problem{'s' if more > 1 else ''}; see skipped)" if more else ""
            )

    def _skip(self, path: tuple[str, ...], why: str, *, problem: bool = False) -> None:
        shown = _shown(path) or "(top folder)"
        self.out.skipped.append((shown, why))
        if problem:  # a part of the disk was not read: said in `error` too
            self.problems.append(f"{shown}: {why}")

    def _read_folder(self, folder: _Folder, queue: deque[_Folder]) -> None:
        try:
            listing = self.reader.list_dir(folder.cluster, first_claimed=True)
            for name, attr, cluster, size in listing:
                self.reader.check_time()
                self.entries += 1
                if self.entries > MAX_FILES:
                    raise _Stop(f"more than {MAX_FILES} entries; the rest were not read")
                if attr & ATTR_DIR:
                    sub = self._folder(name, cluster, folder)
                    if sub is not None:
                        queue.append(sub)
                else:
                    self._file(name, cluster, size, folder)
        except CorruptFilesystem as exc:
            self._skip(folder.path, f"folder not read completely: {exc}", problem=True)

    def _why_not(self, name: str, parent: _Folder) -> str | None:
        """Why an entry cannot be made on the host, whatever its content."""
        if parent.skipped:
            return f"its folder was skipped: {parent.skipped}"
        return unsafe_name(name)

    def _folder(self, name: str, cluster: int, parent: _Folder) -> _Folder | None:
        """The subfolder to read later, made on the host when it can be; None: not read."""
        path = (*parent.path, name)
        if cluster == 0:
            self._skip(path, "directory entry with no cluster")
            return None
        if len(path) > MAX_DEPTH:
            self._skip(
                path, f"folders nested deeper than {MAX_DEPTH} levels; not read", problem=True
            )
            return None
        host_bytes = parent.host_bytes + 1 + len(_host_bytes(name))
        if host_bytes >= PATH_MAX:
            self._skip(path, f"path longer than PATH_MAX ({PATH_MAX} bytes); not read")
            return None
        # Claimed now, not when its turn comes, so two entries for one folder (a cycle, or a
        # cross-link) are caught here, before anything is made for the second.
        taken = self.reader.claim(cluster)
        if taken is not None:
            why = f"not read: {taken} (a directory cycle, or folders sharing clusters)"
            self._skip(path, why, problem=True)
            return None
        skipped = self._why_not(name, parent)
        host = os.path.join(parent.host, name)
        if skipped is None:
            try:
                os.mkdir(host)
            except FileExistsError:
                skipped = "duplicate name"
            except OSError as exc:
                skipped = f"cannot create: {exc.strerror}"
        if skipped is not None:
            self._skip(path, skipped)
            skipped = skipped.removeprefix("its folder was skipped: ")
        return _Folder(path, cluster, skipped, host, host_bytes)

    def _file(self, name: str, cluster: int, size: int, parent: _Folder) -> None:
        out, path = self.out, (*parent.path, name)
        why = self._why_not(name, parent)
        if why is None and parent.host_bytes + 1 + len(_host_bytes(name)) >= PATH_MAX:
            why = f"path longer than PATH_MAX ({PATH_MAX} bytes)"
        if why is None and size > self.file_limit:
            why = f"{size} bytes is over the {self.file_limit}-byte limit"
        if why is None and out.bytes + size > self.total_limit:
            why = "over the total size limit for the output"
        if why is not None:
            self._skip(path, why)
            return
        # The first chunk is read before the file is made: a file refused at its first cluster
        # (shared, out of range) leaves nothing behind.
        chunks = self.reader.read_file(Entry(path, False, cluster, size), self.file_limit)
        try:
            head = next(chunks, b"")
        except CorruptFilesystem as exc:
            self._skip(path, str(exc))
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(os.path.join(parent.host, name), flags, 0o644)
        except FileExistsError:
            self._skip(path, "duplicate name")
            return
        except OSError as exc:
            self._skip(path, f"cannot create: {exc.strerror}")
            return
        written = 0
        try:
            written += _write_all(fd, head)
            for chunk in chunks:
                written += _write_all(fd, chunk)
        except CorruptFilesystem as exc:
            # What could be read is kept (a log cut short still tells something); it is listed
            # as skipped with the reason so nobody mistakes it for the whole file.
            self._skip(path, f"incomplete, {written} bytes kept: {exc}")
        except OutOfTime:
            self._skip(path, f"incomplete, {written} bytes kept: deadline reached")
            raise
        except OSError as exc:
            self._skip(path, f"incomplete, {written} bytes kept: {exc.strerror}")
        finally:
            os.close(fd)
            out.bytes += written
            out.files.append("/".join(path))


def _write_all(fd: int, data: bytes) -> int:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    return len(data)


def unsafe_name(name: str) -> str | None:
    """Why a guest-given file name cannot be used on the host, or None if it can."""
    if name in ("", ".", ".."):
        return "reserved name"
    if len(name.encode("utf-8", errors="replace")) > 255:
        return "name too long"
    if "/" in name or "\\" in name:
        return "path separator in name"
    if "\ufffd" in name or (
        not name.isprintable()  # the common case, quickly; below, what is refused
        and any(unicodedata.category(c) in ("Cc", "Cs") for c in name)
    ):
        return "control or invalid character in name"
    return None


def _printable(name: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in name)[:120]


def _shown(path: tuple[str, ...]) -> str:
    """A path safe to print, and short: both ends kept, as they tell the most."""
    s = "/".join(_printable(p) for p in path)
    return s if len(s) <= SHOWN_MAX else s[:100] + "…" + s[-(SHOWN_MAX - 101) :]


def _host_bytes(name: str) -> bytes:
    return name.encode("utf-8", errors="surrogatepass")
