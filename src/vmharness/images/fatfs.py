"""A small, defensive, read-only FAT16/FAT32 reader for output disks written by untrusted guests.

Why our own reader: nothing here mounts anything, and the guest controls every byte of the disk,
so every offset, cluster chain, name and size is checked before it is used. FAT itself has no
symlinks, device files or sparse files, which removes whole classes of tricks; what remains
(cluster loops, directory cycles, chains shared or merging, lying sizes, hostile names) is
handled below.

Cost is bounded by the disk, whatever it holds: every cluster may be claimed by one file or
folder only (a bitmap over the clusters), so no cluster is read twice; a file's chain is followed
only as far as its size needs; folders are read one cluster at a time (at most 65536 entries,
FAT's own limit); and every step checks the caller's deadline.
"""

from __future__ import annotations

import struct
import sys
import time
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

ATTR_VOLUME = 0x08
ATTR_DIR = 0x10
ATTR_LFN = 0x0F
MAX_DEPTH = 32
MAX_DIR_BYTES = 65536 * 32  # FAT's own limit for a folder: 65536 entries
READ_RUN_BYTES = 1 << 20  # consecutive clusters of a file are read in one go, up to this much
MAX_LFN_PARTS = 31  # a part's order has 5 bits
# Byte maps to 0/1: a slot names an entry when its first byte is neither "end" nor "deleted"
# and its attributes are neither a long-name part nor a volume label...
_LIVE_FIRST = bytes(0 if b in (0x00, 0xE5) else 1 for b in range(256))
_ENTRY_ATTR = bytes(0 if b == ATTR_LFN or b & ATTR_VOLUME else 1 for b in range(256))
# ...and its short name is not "." or ".." (a folder's own entries): byte k of the name is
# one of what _DOT_BYTES[k] maps to 1.
_DOT_BYTES = [
    bytes(b == 0x2E for b in range(256)),
    bytes(b in (0x20, 0x2E) for b in range(256)),
    *[bytes(b == 0x20 for b in range(256))] * 9,
]


class CorruptFilesystem(Exception):
    """The disk, or one file or folder on it, is not FAT we can read safely."""


class OutOfTime(Exception):
    """The caller's deadline passed."""


@dataclass(frozen=True)
class Entry:
    path: tuple[str, ...]  # raw names from the disk, NOT yet checked for safety
    is_dir: bool
    first_cluster: int
    size: int


class FatReader:
    def __init__(self, f: BinaryIO, disk_size: int, *, deadline: float | None = None) -> None:
        """`deadline`: a time.monotonic() value after which every step raises OutOfTime."""
        self.f = f
        self.disk_size = disk_size
        self.deadline = deadline
        self.steps = 0  # clusters claimed so far: the work done, for tests and benchmarks
        boot = self._read_at(0, 512)
        if len(boot) < 512 or boot[510:512] != b"\x55\xaa":
            raise CorruptFilesystem("no FAT boot sector (the guest overwrote it?)")
        (bps, spc, reserved, nfats, root_entries, total16, _media, fat16_size) = struct.unpack_from(
            "<HBHBHHBH", boot, 11
        )
        total32 = struct.unpack_from("<I", boot, 32)[0]
        if bps not in (512, 1024, 2048, 4096) or spc == 0 or spc & (spc - 1) or nfats == 0:
            raise CorruptFilesystem("invalid FAT geometry in the boot sector")
        fat_size = fat16_size or struct.unpack_from("<I", boot, 36)[0]
        total = total16 or total32
        root_dir_sectors = (root_entries * 32 + bps - 1) // bps
        first_data = reserved + nfats * fat_size + root_dir_sectors
        if fat_size == 0 or total <= first_data or total * bps > disk_size:
            raise CorruptFilesystem("FAT sizes do not fit the disk")
        self.bps, self.spc = bps, spc
        self.cluster_bytes = bps * spc
        self.cluster_count = (total - first_data) // spc
        if self.cluster_count < 4085:
            raise CorruptFilesystem("FAT12 is not supported for output disks")
        self.fat32 = self.cluster_count >= 65525
        self.fat_offset = reserved * bps
        self.data_offset = first_data * bps
        self.root_offset = (reserved + nfats * fat_size) * bps
        self.root_bytes = root_dir_sectors * bps
        self.root_cluster = struct.unpack_from("<I", boot, 44)[0] if self.fat32 else 0
        entry_bytes = 4 if self.fat32 else 2
        n = self.cluster_count + 2
        raw = self._read_at(self.fat_offset, n * entry_bytes)
        if len(raw) < n * entry_bytes:
            raise CorruptFilesystem("FAT table is cut short")
        # A packed array, not a list of ints: 2 or 4 bytes a cluster instead of about 36.
        self.fat = array(next(t for t in "HIL" if array(t).itemsize == entry_bytes))
        self.fat.frombytes(raw)
        if sys.byteorder == "big":
            self.fat.byteswap()
        self.mask = 0x0FFFFFFF if self.fat32 else 0xFFFF
        self.eoc = 0x0FFFFFF8 if self.fat32 else 0xFFF8
        self.claimed = bytearray(n)  # 1: the cluster is some file's or folder's

    def _read_at(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.disk_size:
            raise CorruptFilesystem("a structure points past the end of the disk")
        self.f.seek(offset)
        return self.f.read(length)

    def check_time(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise OutOfTime("deadline reached")

    def _in_range(self, cluster: int) -> bool:
        return 2 <= cluster <= self.cluster_count + 1

    def claim(self, cluster: int) -> str | None:
        """Take `cluster` for one file or folder; why it cannot be taken, or None when taken."""
        if not self._in_range(cluster):
            return f"cluster {cluster} is out of range"
        if self.claimed[cluster]:
            return f"cluster {cluster} already belongs to another file or folder"
        self.claimed[cluster] = 1
        self.steps += 1
        return None

    def chain(self, first: int, max_clusters: int, *, first_claimed: bool = False) -> Iterator[int]:
        """Up to `max_clusters` clusters of the chain from `first`, each claimed when reached.

        Lazy on purpose: a chain is followed only as far as the caller reads it, so a 1-byte file
        on a million-cluster chain costs one step. Raises CorruptFilesystem at a cluster that is
        out of range, free, bad or already claimed (by this chain: a loop, or by another file
        or folder). `first_claimed`: the caller has claimed `first` itself.
        """
        cluster = first
        for taken in range(max_clusters):
            self.check_time()
            if not (first_claimed and taken == 0):
                why = self.claim(cluster)
                if why is not None:
                    if self._in_range(cluster) and self._on_chain(first, taken, cluster):
                        why = f"cluster chain loops at cluster {cluster}"
                    raise CorruptFilesystem(why)
            yield cluster
            if taken + 1 == max_clusters:
                return
            nxt = self.fat[cluster] & self.mask
            if nxt >= self.eoc:
                return
            if nxt in (0, 1) or nxt == self.eoc - 1:  # free or bad cluster inside a chain
                raise CorruptFilesystem(f"cluster chain broken after cluster {cluster}")
            cluster = nxt

    def _on_chain(self, first: int, steps: int, cluster: int) -> bool:
        """Whether `cluster` is among the first `steps` clusters from `first` (all valid and
        claimed already): only asked once per refused chain, so at most doubles its cost."""
        c = first
        for _ in range(steps):
            if c == cluster:
                return True
            c = self.fat[c] & self.mask
        return False

    def read_cluster(self, cluster: int) -> bytes:
        return self._read_at(
            self.data_offset + (cluster - 2) * self.cluster_bytes, self.cluster_bytes
        )

    def read_file(self, entry: Entry, limit: int) -> Iterator[bytes]:
        """The file's bytes in chunks, at most min(entry.size, limit); on a damaged chain, what
        was read is yielded before the CorruptFilesystem is raised."""
        remaining = min(entry.size, limit)
        if remaining <= 0:
            return
        cb = self.cluster_bytes
        need = -(-remaining // cb)
        longest = max(1, READ_RUN_BYTES // cb)
        start = count = got = 0  # the run of consecutive clusters not yet read
        try:
            for cluster in self.chain(entry.first_cluster, need):
                got += 1
                if count and cluster == start + count and count < longest:
                    count += 1
                    continue
                if count:
                    data = self._read_run(start, count, remaining)
                    remaining -= len(data)
                    yield data
                start, count = cluster, 1
        except (CorruptFilesystem, OutOfTime):
            if count:
                yield self._read_run(start, count, remaining)
            raise
        if count:
            yield self._read_run(start, count, remaining)
        if got < need:
            raise CorruptFilesystem("file is shorter on disk than its recorded size")

    def _read_run(self, start: int, count: int, remaining: int) -> bytes:
        offset = self.data_offset + (start - 2) * self.cluster_bytes
        return self._read_at(offset, count * self.cluster_bytes)[:remaining]

    def list_dir(
        self, cluster: int | None, *, first_claimed: bool = False
    ) -> Iterator[tuple[str, int, int, int]]:
        """(name, attributes, first cluster, size) of each entry of the folder at `cluster`
        (None: the root), read one cluster at a time; raises CorruptFilesystem when its chain
        is damaged, after the entries before the damage."""
        if cluster is None and not self.fat32:
            chunks: Iterable[bytes] = (self._read_at(self.root_offset, self.root_bytes),)
        elif cluster is None:
            chunks = self._dir_chunks(self.root_cluster, False)
        else:
            chunks = self._dir_chunks(cluster, first_claimed)
        return _dir_entries(chunks, self.fat32)

    def _dir_chunks(self, first: int, first_claimed: bool) -> Iterator[bytes]:
        # The whole chain is claimed before any entry is handed out, so no entry of this folder
        # can take the folder's own later clusters; damage is reported once the entries before
        # it have been read (and not at all if the folder's end marker comes first).
        most = max(1, MAX_DIR_BYTES // self.cluster_bytes)
        clusters: list[int] = []
        damage: CorruptFilesystem | None = None
        try:
            for cluster in self.chain(first, most + 1, first_claimed=first_claimed):
                if len(clusters) == most:
                    raise CorruptFilesystem("folder is larger than FAT allows (65536 entries)")
                clusters.append(cluster)
        except CorruptFilesystem as exc:
            damage = exc
        # Consecutive clusters are read together (a system call each was a third of the time
        # for a disk of folders), up to 64 KiB at a time.
        longest = max(1, (64 << 10) // self.cluster_bytes)
        i = 0
        while i < len(clusters):
            j = i + 1
            while j < len(clusters) and j - i < longest and clusters[j] == clusters[j - 1] + 1:
                j += 1
            yield self._read_run(clusters[i], j - i, (j - i) * self.cluster_bytes)
            i = j
        if damage is not None:
            raise damage


def _dir_entries(chunks: Iterable[bytes], fat32: bool) -> Iterator[tuple[str, int, int, int]]:
    # Speed matters here: a 64 MiB disk can hold 2 million folder slots of deleted entries,
    # volume labels or orphan long-name parts. So the slots that name an entry are found in C
    # (strided slices of the first and attribute bytes, mapped to 0/1 and ANDed as integers),
    # and only those are visited in Python, each looking back for its long name.
    tail = b""  # the last slots seen, for a long name that starts in an earlier chunk
    for data in chunks:
        buf = tail + data
        base = len(tail) // 32  # buf's slots before this chunk's
        firsts, attrs = buf[0::32], buf[11::32]
        n = min(len(firsts), len(attrs))  # equal, unless a read came back short
        end = firsts.find(0, base, n)  # the end-of-folder marker
        stop = n if end < 0 else end
        named = int.from_bytes(firsts[:n].translate(_LIVE_FIRST), "big") & int.from_bytes(
            attrs[:n].translate(_ENTRY_ATTR), "big"
        )
        if firsts.find(0x2E, base, stop) >= 0:  # "." or ".." maybe: a folder of them is cheap
            dots = -1
            for k, table in enumerate(_DOT_BYTES):
                dots &= int.from_bytes(buf[k::32][:n].translate(table), "big")
            named &= ~dots
        flags = named.to_bytes(n, "big")
        i = flags.find(1, base, stop)
        while i >= 0:
            raw = buf[i * 32 : i * 32 + 32]
            name = _long_name(buf, i, raw[:11])
            name = _short_name(raw) if name is None else name
            hi = struct.unpack_from("<H", raw, 20)[0] if fat32 else 0
            lo, size = struct.unpack_from("<HI", raw, 26)
            yield name, raw[11], (hi << 16) | lo, size
            i = flags.find(1, i + 1, stop)
        if end >= 0:
            return
        # The parts a long name can have, and one more to see when a run has too many.
        tail = buf[max(0, n - MAX_LFN_PARTS - 1) * 32 : n * 32]


def _long_name(buf: bytes, i: int, short11: bytes) -> str | None:
    """The long name in the slots before slot `i` (its short entry), or None.

    The parts run back to the one flagged first (0x40) or to any other slot; later parts win
    over earlier ones of the same order. A run of more than 31 parts is garbage."""
    parts: dict[int, int] = {}  # order -> offset
    j = i - 1
    while j >= 0:
        off = j * 32
        first = buf[off]
        if buf[off + 11] != ATTR_LFN or first in (0x00, 0xE5):
            break
        if i - j > MAX_LFN_PARTS:
            return None
        parts.setdefault(first & 0x1F, off)
        if first & 0x40:
            break
        j -= 1
    if not parts or buf[(i - 1) * 32 + 13] != _lfn_checksum(short11):
        return None
    orders = sorted(parts)
    if orders != list(range(1, len(orders) + 1)):
        return None
    return "".join(_lfn_part(buf, parts[o]) for o in orders)


def _lfn_part(data: bytes, off: int) -> str:
    chars = data[off + 1 : off + 11] + data[off + 14 : off + 26] + data[off + 28 : off + 32]
    part = chars.decode("utf-16-le", errors="replace")
    return part.split("\x00", 1)[0].replace("\uffff", "")


def _short_name(raw: bytes) -> str:
    base = bytearray(raw[0:8])
    if base[0] == 0x05:
        base[0] = 0xE5
    b = base.decode("cp437").rstrip(" ")
    e = raw[8:11].decode("cp437").rstrip(" ")
    if raw[12] & 0x08:
        b = b.lower()
    if raw[12] & 0x10:
        e = e.lower()
    return f"{b}.{e}" if e else b


def _lfn_checksum(short: bytes) -> int:
    s = 0
    for byte in short:
        s = (((s & 1) << 7) + (s >> 1) + byte) & 0xFF
    return s
