"""Property-based fuzzing of the output-disk extraction (Hypothesis).

Two kinds of disk: a valid small FAT16 or FAT32 with its metadata (boot sector, FAT, folders)
damaged at random, and disks built from random hostile operations (shared and wild clusters,
rewired FAT entries, hostile names, lying sizes, deep trees). For every one: extract() returns,
writes nothing outside its destination, keeps no more than its limits, lists a reason for all
it skipped, and finishes within its deadline. Example counts are bounded: the file runs in
well under a minute.
"""

from __future__ import annotations

import functools
import os
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fat_images import FatImage, lfn_checksum, lfn_entries, short_entry
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmharness.images import fatfs
from vmharness.images.extract import extract

MIB = 1 << 20
DEADLINE_S = 1.0
SLACK_S = 0.5  # the step in progress when the deadline passes finishes first

SETTINGS = {
    "deadline": None,  # Hypothesis' own per-example deadline: timing is asserted below instead
    "database": None,  # nothing written into the worktree
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


# -- the property ------------------------------------------------------------------------
def check_extraction(
    image: bytes, *, file_limit: int, total_limit: int, expect: dict[str, bytes] | None = None
) -> None:
    with tempfile.TemporaryDirectory(prefix="vmh-fuzz-") as tmp:
        top = Path(tmp)
        disk = top / "output.img"
        disk.write_bytes(image)
        (top / "victim.txt").write_text("must stay\n")
        dest = top / "rundir" / "output"
        dest.parent.mkdir()
        before = sorted(p.name for p in top.iterdir()), (top / "victim.txt").stat().st_mtime_ns
        t0 = time.monotonic()
        result = extract(
            disk, dest, file_limit=file_limit, total_limit=total_limit, deadline_s=DEADLINE_S
        )
        seconds = time.monotonic() - t0
        assert seconds < DEADLINE_S + SLACK_S, f"{seconds:.2f} s"
        after = sorted(p.name for p in top.iterdir()), (top / "victim.txt").stat().st_mtime_ns
        assert after == before and os.listdir(dest.parent) == ["output"]
        assert (top / "victim.txt").read_text() == "must stay\n"
        real = dest.resolve()
        written: dict[str, int] = {}
        for p in dest.rglob("*"):
            st_ = p.lstat()
            assert stat.S_ISDIR(st_.st_mode) or stat.S_ISREG(st_.st_mode), p
            assert real in p.resolve().parents, p
            if stat.S_ISREG(st_.st_mode):
                assert st_.st_size <= file_limit
                written[str(p.relative_to(dest))] = st_.st_size
        assert sorted(written) == sorted(result.files)
        assert sum(written.values()) == result.bytes <= total_limit
        for shown, why in result.skipped:
            assert why and shown.isprintable() and len(shown) <= 300
        assert not (result.error or "").startswith("output disk reader failed"), result.error
        for name, content in (expect or {}).items():
            assert (dest / name).read_bytes() == content, (result.error, result.skipped)


# -- random damage to a valid disk -------------------------------------------------------
@dataclass(frozen=True)
class Valid:
    image: bytes
    meta_end: int  # offsets below this are structures: boot sector, FAT, folders
    fat_off: int
    width: int  # bytes of a FAT entry
    values: tuple[int, ...]  # interesting 16/32-bit values: clusters in use, limits, markers


@functools.cache
def valid_disk(fat32: bool) -> Valid:
    img = FatImage(33 * MIB if fat32 else 4 * MIB)
    img.add_file(img.root, "result.json", b'{"version": 1}\n')
    img.add_file(img.root, "agent.log", b"agent line\n" * 300)
    test = img.mkdir(img.root, "test")
    img.add_file(test, "junit.xml", b"<testsuite/>\n" * 50)
    d = test
    for name in ("deep", "er", "still"):
        d = img.mkdir(d, name)
        img.add_file(d, f"{name}.bin", bytes(range(256)) * 5)
    many = img.mkdir(img.root, "many")
    for n in range(60):  # several folder clusters
        img.add_file(many, f"log number {n}.txt", b"%d\n" % n)
    meta_end = img.cluster_off(img._next) + img.cluster_bytes
    used = range(2, img._next)
    values = (0, 1, 2, 3, img.cluster_count, img.cluster_count + 1, img.cluster_count + 2)
    values += (
        0xFFF7,
        0xFFF8,
        0xFFFF,
        0x0FFFFFF7,
        0x0FFFFFFF,
        0xFFFFFFFF,
        *used[:: max(1, len(used) // 20)],
    )
    return Valid(img.image(), meta_end, img.fat_off, 4 if fat32 else 2, values)


def damaged(data: st.DataObject, fat32: bool) -> bytes:
    """A valid disk with random damage. Drawn step by step, not as one strategy, so a failing
    example is reported as its few draws rather than as megabytes of image."""
    draw = data.draw
    v = valid_disk(fat32)
    b = bytearray(v.image)
    for _ in range(draw(st.integers(1, 30))):
        kind = draw(st.sampled_from(["byte", "fat entry", "word"]))
        if kind == "byte":
            b[draw(st.integers(0, v.meta_end - 1))] = draw(st.integers(0, 255))
            continue
        if kind == "fat entry":  # rewire a chain: point a cluster anywhere
            cluster = draw(st.sampled_from(v.values[2:]) | st.integers(0, 400))
            off = v.fat_off + cluster * v.width
        else:  # a field of a structure: boot sector geometry, entry clusters and sizes
            off = draw(st.integers(0, (v.meta_end - 4) // 2)) * 2
        value = draw(st.sampled_from(v.values) | st.integers(0, 0xFFFFFFFF))
        width = v.width if kind == "fat entry" else draw(st.sampled_from([2, 4]))
        if off + width <= len(b):
            b[off : off + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
    return bytes(b)


limits = st.tuples(
    st.sampled_from([100, 5000, 256 * MIB]), st.sampled_from([0, 3000, 100_000, 64 * MIB])
)


@settings(max_examples=120, **SETTINGS)
@given(data=st.data(), lim=limits)
def test_damaged_fat16_disk(data: st.DataObject, lim: tuple[int, int]) -> None:
    check_extraction(damaged(data, False), file_limit=lim[0], total_limit=lim[1])


@settings(max_examples=25, **SETTINGS)
@given(data=st.data(), lim=limits)
def test_damaged_fat32_disk(data: st.DataObject, lim: tuple[int, int]) -> None:
    check_extraction(damaged(data, True), file_limit=lim[0], total_limit=lim[1])


# -- disks built from hostile operations -------------------------------------------------
HOSTILE_NAMES = [
    "result.json",
    "..",
    ".",
    "../../victim.txt",
    "a\\b",
    "nul\x00byte",
    "esc\x1b[31m",
    "\ud800lonely",
    "x" * 255,
    "y" * 300,
    "ünïcødé",
    "same",
    "same",
]
names = st.sampled_from(HOSTILE_NAMES) | st.text(max_size=30)


SENTINEL = "sentinel-result.json"
SENTINEL_DATA = b'{"version": 1, "sentinel": true}\n'


def hostile(data: st.DataObject, fat32: bool) -> tuple[bytes, bool]:
    """A disk of random hostile operations, then, last in the top folder, a sentinel file on a
    cluster nothing else was pointed at: (image, whether the sentinel could be added)."""
    draw = data.draw
    img = FatImage(33 * MIB if fat32 else 4 * MIB)
    dirs = [img.root]
    used: list[int] = [img.root.cluster] if fat32 else []  # what entries may point at
    rewirable: list[int] = []  # whose FAT entries may be changed: not the root's
    sentinel = img.alloc(1)
    img.write(sentinel, SENTINEL_DATA)

    def pick_cluster() -> int | None:
        choice = draw(st.sampled_from(["fresh", "fresh", "used", "wild"]))
        if choice == "used" and used:
            return draw(st.sampled_from(used))
        if choice == "wild":
            wild = draw(st.integers(0, img.cluster_count + 4))
            return wild + 1 if wild == sentinel[0] else wild
        return None

    for _ in range(draw(st.integers(1, 25))):
        op = draw(st.sampled_from(["file", "file", "dir", "fat", "deep"]))
        parent = dirs[draw(st.integers(0, len(dirs) - 1))]
        try:
            if op == "file":
                payload = b"d" * draw(st.integers(0, 3000))
                size = draw(st.sampled_from([None, 0, 0xFFFFFFFF]) | st.integers(0, 1 << 20))
                first = pick_cluster()
                new = img.add_file(parent, draw(names), payload, size=size, first=first)
                used.extend(new[:3])
                rewirable.extend(new[:3])
            elif op == "dir":
                sub = img.mkdir(parent, draw(names), cluster=pick_cluster())
                if 2 <= sub.cluster <= img.cluster_count + 1 and sub.cluster != img.root.cluster:
                    dirs.append(sub)
                    used.append(sub.cluster)
                    rewirable.append(sub.cluster)
            elif op == "fat" and rewirable:
                target = draw(st.sampled_from(rewirable))
                value = draw(
                    st.sampled_from([0, 1, img.eoc, img.eoc - 8, img.cluster_count + 2])
                    | st.sampled_from(used)
                )
                img.set_fat(target, value)
            elif op == "deep":
                d = parent
                for _ in range(draw(st.integers(1, 40))):
                    d = img.mkdir(d, draw(st.sampled_from(["d", "e" * 200])))
                img.add_file(d, "bottom.txt", b"deep")
        except ValueError:  # the image or its top folder is full: enough
            break
    try:
        img.add_file(img.root, SENTINEL, size=len(SENTINEL_DATA), first=sentinel[0])
    except ValueError:
        return img.image(), False
    return img.image(), True


def check_hostile(data: st.DataObject, fat32: bool, lim: tuple[int, int]) -> None:
    image, has_sentinel = hostile(data, fat32)
    # Whatever the rest of the disk holds, a top-level file of its own is always copied
    # (when the limits leave room for it: the whole disk fits in 64 MiB).
    expect = {SENTINEL: SENTINEL_DATA} if has_sentinel and lim[1] >= 64 * MIB else {}
    check_extraction(image, file_limit=lim[0], total_limit=lim[1], expect=expect)


@settings(max_examples=100, **SETTINGS)
@given(data=st.data(), lim=limits)
def test_hostile_fat16_disk(data: st.DataObject, lim: tuple[int, int]) -> None:
    check_hostile(data, False, lim)


@settings(max_examples=20, **SETTINGS)
@given(data=st.data(), lim=limits)
def test_hostile_fat32_disk(data: st.DataObject, lim: tuple[int, int]) -> None:
    check_hostile(data, True, lim)


# -- the folder parser against a plain one -----------------------------------------------
def reference_entries(chunks: list[bytes], fat32: bool) -> list[tuple[str, int, int, int]]:
    """Folder slots read one by one, the obvious way (as the reader once did), with the one
    rule the fast parser adds: a run of more than 31 long-name parts names nothing."""
    out: list[tuple[str, int, int, int]] = []
    parts: dict[int, bytes] = {}
    lfn_sum, run = -1, 0
    for data in chunks:
        for off in range(0, len(data) - 31, 32):
            raw = data[off : off + 32]
            first, attr = raw[0], raw[11]
            if first == 0x00:
                return out
            if first == 0xE5:
                parts, run = {}, 0
                continue
            if attr == 0x0F:
                if first & 0x40:
                    parts, run = {}, 0
                parts[first & 0x1F] = raw
                lfn_sum, run = raw[13], run + 1
                continue
            if attr & 0x08:
                parts, run = {}, 0
                continue
            short = fatfs._short_name(raw)
            name = short
            if parts and run <= fatfs.MAX_LFN_PARTS and lfn_sum == fatfs._lfn_checksum(raw[:11]):
                orders = sorted(parts)
                if orders == list(range(1, len(orders) + 1)):
                    name = "".join(fatfs._lfn_part(parts[o], 0) for o in orders)
            parts, run = {}, 0
            if short in (".", ".."):
                continue
            hi = int.from_bytes(raw[20:22], "little") if fat32 else 0
            lo, size = int.from_bytes(raw[26:28], "little"), int.from_bytes(raw[28:32], "little")
            out.append((name, attr, (hi << 16) | lo, size))
    return out


SHORTS = [b"RESULT  JSN", b"A       TXT", b".          ", b"..         ", b".X      TXT"]
SHORTS += [b".X         ", b". X        ", b"...        ", b"..        X"]  # named entries


def lfn_part(orders: st.SearchStrategy[int], csum: int) -> st.SearchStrategy[bytes]:
    def build(order: int, chars: str, csum: int) -> bytes:
        b = bytearray(32)
        b[0] = order
        b[1:11] = chars.encode("utf-16-le").ljust(10, b"\xff")
        b[11] = 0x0F
        b[13] = csum
        return bytes(b)

    chars = st.sampled_from(["ab", "cd", "e\x00", "\x00"])  # "\x00" alone: an empty name
    return st.builds(build, orders, chars, st.sampled_from([csum, csum, csum, csum ^ 1]))


@st.composite
def folder_slots(draw: st.DrawFn) -> list[bytes]:
    slots: list[bytes] = []
    for _ in range(draw(st.integers(0, 40))):
        kind = draw(
            st.sampled_from(["long name", "parts", "run", "short", "deleted", "volume", "end"])
        )
        short = draw(st.sampled_from(SHORTS))
        csum = lfn_checksum(short)
        if kind == "long name":  # a whole, valid one, sometimes longer than a file name may be
            slots += lfn_entries("n" * draw(st.integers(1, 400)), short)
            slots.append(short_entry(short, 0x20, 2, 7))
        elif kind in ("parts", "run"):  # loose parts: orders repeated, flagged first or not
            if kind == "parts":
                orders = st.sampled_from([1, 2, 0x41, 0x42, 0]) | st.integers(0, 0x5F)
                slots += draw(st.lists(lfn_part(orders, csum), min_size=1, max_size=4))
            else:  # around the 31-part limit
                orders = st.sampled_from([1, 2])
                slots += draw(st.lists(lfn_part(orders, csum), min_size=30, max_size=33))
            if draw(st.integers(0, 3)):
                slots.append(short_entry(short, 0x20, 2, 7))
        elif kind == "short":
            attr = draw(st.sampled_from([0x20, 0x10, 0x01, 0x28, 0x0E]))
            slots.append(short_entry(short, attr, draw(st.integers(0, 1 << 20)), 7))
        elif kind == "deleted":
            slots.append(b"\xe5" + bytes(31))
        elif kind == "volume":
            slots.append(short_entry(b"LABEL", 0x08, 0, 0))
        elif draw(st.integers(0, 5)) == 0:  # the end marker, now and then
            slots.append(bytes(32))
    return slots


@settings(max_examples=150, **SETTINGS)
@given(slots=folder_slots(), data=st.data(), fat32=st.booleans())
def test_folder_parser_matches_the_plain_one(
    slots: list[bytes], data: st.DataObject, fat32: bool
) -> None:
    """Folders cut into chunks anywhere, as clusters are: entries, long names and all."""
    if data.draw(st.booleans()):  # anywhere
        cuts = data.draw(st.lists(st.integers(0, len(slots)), max_size=10))
    else:  # every k slots: k=1 puts every entry first in its chunk
        cuts = list(range(0, len(slots), data.draw(st.sampled_from([1, 1, 2, 3, 16]))))
    whole = b"".join(slots)
    edges = sorted({0, len(slots), *cuts})
    chunks = [whole[a * 32 : b * 32] for a, b in zip(edges, edges[1:], strict=False)]
    assert list(fatfs._dir_entries(chunks, fat32)) == reference_entries(chunks, fat32)
