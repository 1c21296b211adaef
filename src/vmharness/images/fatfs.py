"""A small, defensive, read-only FAT16/FAT32 reader for output disks written by untrusted guests.

Why our own reader: nothing here mounts anything, and the guest controls every byte of the disk,
so every offset, cluster chain, name and size is checked before it is used. FAT itself has no
symlinks, device files or sparse files, which removes whole classes of tricks; what remains
(cluster loops, directory cycles, lying sizes, hostile names) is handled below.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

ATTR_VOLUME = 0x08
ATTR_DIR = 0x10
ATTR_LFN = 0x0F
MAX_DEPTH = 32


class CorruptFilesystem(Exception):
    """The disk is not a FAT filesystem we can read safely."""


@dataclass(frozen=True)
class Entry:
    path: tuple[str, ...]  # raw names from the disk, NOT yet checked for safety
    is_dir: bool
    first_cluster: int
    size: int


class FatReader:
    def __init__(self, f: BinaryIO, disk_size: int) -> None:
        self.f = f
        self.disk_size = disk_size
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
        fat = self._read_at(self.fat_offset, (self.cluster_count + 2) * entry_bytes)
        if len(fat) < (self.cluster_count + 2) * entry_bytes:
            raise CorruptFilesystem("FAT table is cut short")
        if self.fat32:
            self.fat = [v & 0x0FFFFFFF for v in struct.unpack(f"<{self.cluster_count + 2}I", fat)]
            self.eoc = 0x0FFFFFF8
        else:
            self.fat = list(struct.unpack(f"<{self.cluster_count + 2}H", fat))
            self.eoc = 0xFFF8

    def _read_at(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.disk_size:
            raise CorruptFilesystem("a structure points past the end of the disk")
        self.f.seek(offset)
        return self.f.read(length)

    def chain(self, first: int) -> list[int]:
        """The cluster chain from `first`, refusing loops and out-of-range clusters."""
        clusters: list[int] = []
        seen: set[int] = set()
        cluster = first
        while True:
            if cluster < 2 or cluster > self.cluster_count + 1:
                raise CorruptFilesystem(f"cluster {cluster} is out of range")
            if cluster in seen:
                raise CorruptFilesystem(f"cluster chain loops at cluster {cluster}")
            seen.add(cluster)
            clusters.append(cluster)
            nxt = self.fat[cluster]
            if nxt >= self.eoc:
                return clusters
            if nxt in (0, 1) or nxt == self.eoc - 1:  # free or bad cluster inside a chain
                raise CorruptFilesystem(f"cluster chain broken after cluster {cluster}")
            cluster = nxt

    def read_cluster(self, cluster: int) -> bytes:
        return self._read_at(
            self.data_offset + (cluster - 2) * self.cluster_bytes, self.cluster_bytes
        )

    def read_file(self, entry: Entry, limit: int) -> Iterator[bytes]:
        """The file's bytes in chunks, at most min(entry.size, limit)."""
        remaining = min(entry.size, limit)
        if remaining == 0:
            return
        for cluster in self.chain(entry.first_cluster):
            data = self.read_cluster(cluster)[:remaining]
            remaining -= len(data)
            yield data
            if remaining == 0:
                return
        raise CorruptFilesystem("file is shorter on disk than its recorded size")

    def walk(self) -> Iterator[Entry]:
        """Every entry, depth first. Directory cycles and excessive depth are refused."""
        if self.fat32:
            root = b"".join(self.read_cluster(c) for c in self.chain(self.root_cluster))
        else:
            root = self._read_at(self.root_offset, self.root_bytes)
        visited: set[int] = {self.root_cluster} if self.fat32 else set()
        yield from self._walk_dir(root, (), visited)

    def _walk_dir(self, data: bytes, prefix: tuple[str, ...], visited: set[int]) -> Iterator[Entry]:
        if len(prefix) > MAX_DEPTH:
            raise CorruptFilesystem(f"directories nested deeper than {MAX_DEPTH}")
        for name, attr, cluster, size in _dir_entries(data, self.fat32):
            path = (*prefix, name)
            if attr & ATTR_DIR:
                if cluster == 0:  # broken entry: shown to the caller, which skips it
                    yield Entry(path, True, 0, 0)
                    continue
                if cluster in visited:
                    raise CorruptFilesystem(f"directory cycle at {'/'.join(path)!r}")
                visited.add(cluster)
                yield Entry(path, True, cluster, 0)
                sub = b"".join(self.read_cluster(c) for c in self.chain(cluster))
                yield from self._walk_dir(sub, path, visited)
            else:
                yield Entry(path, False, cluster, size)


def _dir_entries(data: bytes, fat32: bool) -> Iterator[tuple[str, int, int, int]]:
    lfn_parts: dict[int, str] = {}
    lfn_sum: int | None = None
    for off in range(0, len(data) - 31, 32):
        raw = data[off : off + 32]
        first = raw[0]
        if first == 0x00:
            return
        if first == 0xE5:
            lfn_parts, lfn_sum = {}, None
            continue
        attr = raw[11]
        if attr == ATTR_LFN:
            order = first & 0x1F
            chars = raw[1:11] + raw[14:26] + raw[28:32]
            part = chars.decode("utf-16-le", errors="replace")
            part = part.split("\x00", 1)[0].replace("\uffff", "")
            if first & 0x40:
                lfn_parts = {}
            lfn_parts[order] = part
            lfn_sum = raw[13]
            continue
        if attr & ATTR_VOLUME:
            lfn_parts, lfn_sum = {}, None
            continue
        short = _short_name(raw)
        name = short
        if lfn_parts and lfn_sum == _lfn_checksum(raw[:11]):
            orders = sorted(lfn_parts)
            if orders == list(range(1, len(orders) + 1)):
                name = "".join(lfn_parts[o] for o in orders)
        lfn_parts, lfn_sum = {}, None
        if short in (".", ".."):
            continue
        hi = struct.unpack_from("<H", raw, 20)[0] if fat32 else 0
        lo, size = struct.unpack_from("<HI", raw, 26)
        yield name, attr, (hi << 16) | lo, size


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
