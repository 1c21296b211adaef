"""Getting results back: copy an output disk's files into the run's folder, safely.

The guest is untrusted. Every name is checked (no separators, no `..`, no control characters),
every file is created fresh with O_EXCL|O_NOFOLLOW inside a folder this code made itself, sizes
are capped per file and in total, and a corrupted filesystem ends in a reason, never a crash.
"""

from __future__ import annotations

import os
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from .fatfs import CorruptFilesystem, Entry, FatReader

DEFAULT_FILE_LIMIT = 256 * 1024 * 1024
MAX_FILES = 20000


@dataclass
class Extraction:
    files: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path as shown, reason)
    bytes: int = 0
    error: str | None = None  # set when the disk could not be read at all or stopped midway
    seconds: float = 0.0

    @property
    def readable(self) -> bool:
        return self.error is None or bool(self.files)


def extract(
    disk: Path, dest: Path, *, file_limit: int = DEFAULT_FILE_LIMIT, total_limit: int | None = None
) -> Extraction:
    """Copy every regular file of the FAT output disk `disk` into `dest` (new folder)."""
    t0 = time.monotonic()
    out = Extraction()
    dest.mkdir(parents=True, exist_ok=False)
    try:
        disk_size = disk.stat().st_size
        total_limit = total_limit if total_limit is not None else disk_size
        with open(disk, "rb") as f:
            reader = FatReader(f, disk_size)
            for count, entry in enumerate(reader.walk()):
                if count >= MAX_FILES:
                    out.error = f"more than {MAX_FILES} entries; the rest were not read"
                    break
                _copy_entry(reader, entry, dest, out, file_limit, total_limit)
    except CorruptFilesystem as exc:
        out.error = f"output disk unreadable: {exc}"
    except OSError as exc:
        out.error = f"output disk unreadable: {exc}"
    out.seconds = time.monotonic() - t0
    return out


def _copy_entry(
    reader: FatReader, entry: Entry, dest: Path, out: Extraction, file_limit: int, total_limit: int
) -> None:
    shown = "/".join(_printable(p) for p in entry.path)
    bad = next((reason for p in entry.path if (reason := unsafe_name(p))), None)
    if bad:
        out.skipped.append((shown, bad))
        return
    target = dest.joinpath(*entry.path)
    if entry.is_dir and entry.first_cluster == 0:
        out.skipped.append((shown, "directory entry with no cluster"))
        return
    if entry.is_dir:
        try:
            target.mkdir()
        except FileExistsError:
            out.skipped.append((shown, "duplicate name"))
        except OSError as exc:
            out.skipped.append((shown, f"cannot create: {exc.strerror}"))
        return
    if not target.parent.is_dir() or target.parent.is_symlink():
        out.skipped.append((shown, "its folder was skipped"))
        return
    if entry.size > file_limit:
        out.skipped.append((shown, f"{entry.size} bytes is over the {file_limit}-byte limit"))
        return
    if out.bytes + entry.size > total_limit:
        out.skipped.append((shown, "over the total size limit for the output"))
        return
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        out.skipped.append((shown, "duplicate name"))
        return
    except OSError as exc:
        out.skipped.append((shown, f"cannot create: {exc.strerror}"))
        return
    written = 0
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in reader.read_file(entry, file_limit):
                f.write(chunk)
                written += len(chunk)
    except CorruptFilesystem as exc:
        # What could be read is kept (a log cut short still tells something); it is listed
        # as skipped with the reason so nobody mistakes it for the whole file.
        out.skipped.append((shown, f"incomplete, {written} bytes kept: {exc}"))
    out.bytes += written
    out.files.append("/".join(entry.path))


def unsafe_name(name: str) -> str | None:
    """Why a guest-given file name cannot be used on the host, or None if it can."""
    if name in ("", ".", ".."):
        return "reserved name"
    if len(name.encode("utf-8", errors="replace")) > 255:
        return "name too long"
    if "/" in name or "\\" in name:
        return "path separator in name"
    if any(unicodedata.category(c) in ("Cc", "Cs") or c == "\ufffd" for c in name):
        return "control or invalid character in name"
    return None


def _printable(name: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in name)[:120]
