"""A FAT16/FAT32 image writer for hostile output disks, byte by byte, with no tools needed.

A guest controls every byte of its output disk, geometry included, so these images choose the
worst geometry on purpose (512-byte clusters: the most clusters, the longest chains) and then
break the rules: chains shared between files, folders whose chains merge, cycles, deep trees.
Used by the extraction tests and by bench/bench_extract_hostile.py.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

ATTR_FILE = 0x20
ATTR_DIR = 0x10


def lfn_checksum(short11: bytes) -> int:
    s = 0
    for byte in short11:
        s = (((s & 1) << 7) + (s >> 1) + byte) & 0xFF
    return s


def lfn_entries(name: str, short11: bytes) -> list[bytes]:
    """VFAT long-name slots for `name` (any characters, lone surrogates too), last part first."""
    raw = name.encode("utf-16-le", errors="surrogatepass")
    units = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    count = max(1, (len(units) + 12) // 13)
    if len(units) % 13:
        units.append(b"\x00\x00")
    units += [b"\xff\xff"] * (count * 13 - len(units))
    csum = lfn_checksum(short11)
    out = []
    for seq in range(count, 0, -1):
        part = units[(seq - 1) * 13 : seq * 13]
        e = bytearray(32)
        e[0] = (seq & 0x1F) | (0x40 if seq == count else 0)
        e[1:11] = b"".join(part[0:5])
        e[11] = 0x0F
        e[13] = csum
        e[14:26] = b"".join(part[5:11])
        e[28:32] = b"".join(part[11:13])
        out.append(bytes(e))
    return out


def short_entry(short11: bytes, attr: int, cluster: int, size: int) -> bytes:
    e = bytearray(32)
    e[0:11] = short11.ljust(11)[:11]
    e[11] = attr
    struct.pack_into("<H", e, 20, (cluster >> 16) & 0xFFFF)
    struct.pack_into("<HI", e, 26, cluster & 0xFFFF, size & 0xFFFFFFFF)
    return bytes(e)


@dataclass
class Dir:
    cluster: int  # 0: the FAT16 root region
    clusters: list[int] = field(default_factory=list)
    used: int = 0  # slots written


class FatImage:
    """An empty FAT filesystem in memory; FAT32 when it has 65525 clusters or more."""

    def __init__(
        self,
        size: int,
        *,
        bps: int = 512,
        spc: int = 1,
        nfats: int = 1,
        root_entries: int = 512,
    ) -> None:
        self.size, self.bps, self.spc, self.nfats = size, bps, spc, nfats
        self.cluster_bytes = bps * spc
        total = size // bps
        # Settle the FAT size: it depends on the cluster count, which depends on it.
        for fat32 in (False, True):
            reserved = 32 if fat32 else 1
            rdir = 0 if fat32 else -(-root_entries * 32 // bps)
            entry = 4 if fat32 else 2
            fat_size = 1
            for _ in range(10):
                clusters = (total - reserved - nfats * fat_size - rdir) // spc
                fat_size = -(-(clusters + 2) * entry // bps)
            clusters = (total - reserved - nfats * fat_size - rdir) // spc
            if (clusters >= 65525) == fat32:
                break
        self.fat32 = fat32
        self.cluster_count = clusters
        self.fat_size = fat_size
        self.b = bytearray(size)
        b = self.b
        b[0:3] = b"\xeb\x3c\x90"
        b[3:11] = b"VMHTEST "
        struct.pack_into(
            "<HBHBHHBH",
            b,
            11,
            bps,
            spc,
            reserved,
            nfats,
            0 if fat32 else root_entries,
            0 if fat32 or total > 0xFFFF else total,
            0xF8,
            0 if fat32 else fat_size,
        )
        struct.pack_into("<I", b, 32, total if fat32 or total > 0xFFFF else 0)
        if fat32:
            struct.pack_into("<IHHI", b, 36, fat_size, 0, 0, 2)
        b[510:512] = b"\x55\xaa"
        self.fat_off = reserved * bps
        self.root_off = (reserved + nfats * fat_size) * bps
        self.data_off = self.root_off + rdir * bps
        self.root_entries = root_entries
        self.eoc = 0x0FFFFFFF if fat32 else 0xFFFF
        self.set_fat(0, 0x0FFFFFF8 if fat32 else 0xFFF8)
        self.set_fat(1, self.eoc)
        self._next = 2
        self._names = 0
        if fat32:
            (root,) = self.alloc(1)
            self.root = Dir(root, [root])
        else:
            self.root = Dir(0)

    # FAT ------------------------------------------------------------------------------------
    def set_fat(self, cluster: int, value: int) -> None:
        fmt, width = ("<I", 4) if self.fat32 else ("<H", 2)
        for n in range(self.nfats):
            off = self.fat_off + n * self.fat_size * self.bps + cluster * width
            struct.pack_into(fmt, self.b, off, value)

    def get_fat(self, cluster: int) -> int:
        fmt, width = ("<I", 4) if self.fat32 else ("<H", 2)
        return struct.unpack_from(fmt, self.b, self.fat_off + cluster * width)[0]

    def link(self, clusters: list[int], end: int | None = None) -> None:
        """Chain `clusters` in order; the last points at `end` (end of chain by default)."""
        for a, b in zip(clusters, clusters[1:], strict=False):
            self.set_fat(a, b)
        self.set_fat(clusters[-1], self.eoc if end is None else end)

    def alloc(self, n: int) -> list[int]:
        """`n` free clusters, lowest first, chained together."""
        out: list[int] = []
        while len(out) < n:
            if self._next > self.cluster_count + 1:
                raise ValueError("image full")
            if self.get_fat(self._next) == 0:
                out.append(self._next)
            self._next += 1
        self.link(out)
        return out

    def free_clusters(self) -> int:
        return self.cluster_count + 2 - self._next

    # data -----------------------------------------------------------------------------------
    def cluster_off(self, cluster: int) -> int:
        return self.data_off + (cluster - 2) * self.cluster_bytes

    def write(self, clusters: list[int], data: bytes) -> None:
        cb = self.cluster_bytes
        for i, c in enumerate(clusters):
            chunk = data[i * cb : (i + 1) * cb]
            if not chunk:
                break
            off = self.cluster_off(c)
            self.b[off : off + len(chunk)] = chunk

    def fill(self, clusters: list[int], pattern: bytes) -> None:
        """Every cluster in `clusters` filled with `pattern` repeated (e.g. deleted entries)."""
        block = (pattern * (self.cluster_bytes // len(pattern) + 1))[: self.cluster_bytes]
        for c in clusters:
            off = self.cluster_off(c)
            self.b[off : off + self.cluster_bytes] = block

    # directories ----------------------------------------------------------------------------
    def _slot_off(self, d: Dir, slot: int) -> int:
        if d.cluster == 0 and not d.clusters:
            if slot >= self.root_entries:
                raise ValueError("root directory full")
            return self.root_off + slot * 32
        per = self.cluster_bytes // 32
        while slot // per >= len(d.clusters):  # grow the folder by one cluster
            (c,) = self.alloc(1)
            self.set_fat(d.clusters[-1], c)
            d.clusters.append(c)
            off = self.cluster_off(c)
            self.b[off : off + self.cluster_bytes] = bytes(self.cluster_bytes)
        return self.cluster_off(d.clusters[slot // per]) + (slot % per) * 32

    def add_raw(self, d: Dir, entries: list[bytes]) -> None:
        for e in entries:
            off = self._slot_off(d, d.used)
            self.b[off : off + 32] = e
            d.used += 1

    def next_short(self) -> bytes:
        self._names += 1
        return f"V{self._names:07X}BIN".encode()

    def add_file(
        self,
        d: Dir,
        name: str | None,
        data: bytes = b"",
        *,
        size: int | None = None,
        first: int | None = None,
        short11: bytes | None = None,
    ) -> list[int]:
        """A file; with `first`, an entry pointing at that cluster instead of fresh ones."""
        short11 = short11 or self.next_short()
        clusters: list[int] = []
        if first is None and data:
            clusters = self.alloc(-(-len(data) // self.cluster_bytes))
            self.write(clusters, data)
            first = clusters[0]
        entries = lfn_entries(name, short11) if name is not None else []
        entries.append(
            short_entry(short11, ATTR_FILE, first or 0, len(data) if size is None else size)
        )
        self.add_raw(d, entries)
        return clusters

    def mkdir(self, d: Dir, name: str, *, cluster: int | None = None) -> Dir:
        """A subfolder; with `cluster`, an entry pointing at that cluster (nothing written)."""
        short11 = self.next_short()
        if cluster is None:
            (c,) = self.alloc(1)
            off = self.cluster_off(c)
            self.b[off : off + self.cluster_bytes] = bytes(self.cluster_bytes)
            sub = Dir(c, [c])
            self.add_raw(
                sub,
                [
                    short_entry(b".", ATTR_DIR, c, 0),
                    short_entry(b"..", ATTR_DIR, 0 if d is self.root else d.cluster, 0),
                ],
            )
        else:
            sub = Dir(cluster, [cluster])
        self.add_raw(
            d, [*lfn_entries(name, short11), short_entry(short11, ATTR_DIR, sub.cluster, 0)]
        )
        return sub

    def image(self) -> bytes:
        return bytes(self.b)
