"""Output disks made to crash, stall or fill the host: each must end in files, `skipped` or `error`.

The disks are written byte by byte (tests/fat_images.py) with the geometry a hostile guest would
pick: 512-byte clusters, so the most clusters and the longest chains a disk of its size allows.
"""

from __future__ import annotations

import os
import stat
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import pytest
from fat_images import FatImage, short_entry

from vmharness.images.extract import MAX_FILES, Extraction, extract

MIB = 1 << 20


def snapshot(root: Path, exclude: Path) -> dict[str, tuple]:
    snap: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == exclude or exclude in here.parents:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = here / name
            if p == exclude:
                continue
            st = p.lstat()
            snap[str(p)] = (st.st_mode, st.st_size, st.st_mtime_ns) if name in filenames else ()
    return snap


@dataclass
class Ran:
    result: Extraction
    dest: Path
    seconds: float  # extraction alone
    peak: int  # bytes allocated at the peak of the extraction, when traced


def run(tmp_path: Path, img: FatImage, *, trace: bool = False, **kwargs) -> Ran:
    """Extract `img`, checking that nothing outside the destination changed and that all
    that was written is plain folders and files inside it."""
    disk = tmp_path / "work" / "output.img"
    disk.parent.mkdir(exist_ok=True)
    disk.write_bytes(img.image())
    dest = tmp_path / "rundir" / "runs" / "0001" / "output"
    dest.parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "victim.txt").write_text("must stay\n")
    before = snapshot(tmp_path, dest)
    peak = 0
    if trace:
        tracemalloc.start()
    t0 = time.monotonic()
    try:
        result = extract(disk, dest, **kwargs)
        seconds = time.monotonic() - t0
        if trace:
            peak = tracemalloc.get_traced_memory()[1]
    finally:
        if trace:
            tracemalloc.stop()
    assert snapshot(tmp_path, dest) == before, "something outside dest changed"
    real = dest.resolve()
    for p in dest.rglob("*"):
        mode = p.lstat().st_mode
        assert stat.S_ISDIR(mode) or stat.S_ISREG(mode), p
        assert real in p.resolve().parents, p
    return Ran(result, dest, seconds, peak)


def long_chain(img: FatImage, keep_free: int = 0) -> list[int]:
    """One chain over every free cluster but `keep_free`."""
    return img.alloc(img.free_clusters() - keep_free)


# -- 1. CPU and memory -----------------------------------------------------------------------
def test_many_entries_sharing_one_long_chain(tmp_path: Path) -> None:
    """1,000 one-byte files on one 32,000-cluster chain: once 32 million chain steps; now the
    first file has the cluster and every other one is refused at its first step."""
    img = FatImage(16 * MIB)
    img.add_file(img.root, "result.json", b'{"version": 1}\n')
    many = img.mkdir(img.root, "many")
    img.add_raw(many, [bytes(32)] * 2000)  # room for the entries before the chain takes the rest
    many.used = 2
    chain = long_chain(img)
    assert len(chain) > 32000
    img.write(chain[:1], b"A")
    for n in range(1000):
        img.add_file(many, f"f{n}.log", size=1, first=chain[0])
    r = run(tmp_path, img)
    assert r.seconds < 2.0, f"{r.seconds:.1f} s"
    assert (r.dest / "result.json").read_bytes() == b'{"version": 1}\n'
    assert (r.dest / "many" / "f0.log").read_bytes() == b"A"
    refused = [why for shown, why in r.result.skipped if shown.startswith("many/f")]
    assert len(refused) == 999
    assert all("already belongs to another file or folder" in why for why in refused)


def test_files_read_only_as_much_chain_as_their_size_needs(tmp_path: Path) -> None:
    """1,000 two-byte files, each starting further along one long chain: each costs one step,
    not the 32,000 to the chain's end."""
    img = FatImage(16 * MIB)
    folders = [img.mkdir(img.root, f"d{n}") for n in range(2)]
    for d in folders:  # room for 500 short-name entries each before the chain takes the rest
        img.add_raw(d, [bytes(32)] * 500)
        d.used = 2
    chain = long_chain(img)
    for n in range(1000):
        img.write([chain[n]], n.to_bytes(2, "big"))
        img.add_file(folders[n % 2], None, size=2, first=chain[n])
    r = run(tmp_path, img)
    assert r.seconds < 2.0, f"{r.seconds:.1f} s"
    assert r.result.error is None and r.result.skipped == []
    assert len(r.result.files) == 1000
    # file 3 is the second in d1; short names count on from the 2 folders' (V0000001-2)
    assert (r.dest / "d1" / f"V{2 + 4:07X}.BIN").read_bytes() == (3).to_bytes(2, "big")


def test_chain_past_the_size_is_not_followed(tmp_path: Path) -> None:
    """What lies after the clusters a file needs (here a loop, and a cluster out of range) is
    nobody's business: the file is read whole and nothing is reported."""
    img = FatImage(4 * MIB)
    a = img.add_file(img.root, "loops-after.txt", b"x" * 600)
    img.set_fat(a[-1], a[0])  # 2 clusters needed, then a loop
    b = img.add_file(img.root, "wild-after.txt", b"y" * 10)
    img.set_fat(b[-1], 0xFFF0)  # a reserved value, out of range
    r = run(tmp_path, img)
    assert r.result.skipped == [] and r.result.error is None
    assert (r.dest / "loops-after.txt").read_bytes() == b"x" * 600
    assert (r.dest / "wild-after.txt").read_bytes() == b"y" * 10


def test_a_cluster_belongs_to_one_file_only(tmp_path: Path) -> None:
    img = FatImage(4 * MIB)
    first = img.add_file(img.root, "first.log", b"1" * 2000)  # 4 clusters
    img.add_file(img.root, "joins-midway.log", size=2000, first=first[2])
    c = img.add_file(img.root, "runs-into.log", b"2" * 1024, size=2000)
    img.set_fat(c[-1], first[1])  # its 3rd cluster is first.log's 2nd
    img.add_file(img.root, "result.json", b"{}")
    r = run(tmp_path, img)
    assert (r.dest / "first.log").read_bytes() == b"1" * 2000
    assert (r.dest / "result.json").read_bytes() == b"{}"
    reasons = dict(r.result.skipped)
    assert "already belongs" in reasons["joins-midway.log"]
    assert not (r.dest / "joins-midway.log").exists()  # refused at its first cluster
    assert "already belongs" in reasons["runs-into.log"]
    assert (r.dest / "runs-into.log").read_bytes() == b"2" * 1024  # its own two clusters


@pytest.mark.parametrize("filler", ["deleted entries", "zeros"])
def test_folders_whose_chains_merge(tmp_path: Path, filler: str) -> None:
    """Folder k starts at cluster k of one chain running to the end of the disk and holds folder
    k+1: once, each of the 33 levels held the whole rest of the disk in memory at once."""
    img = FatImage(4 * MIB)
    img.add_file(img.root, "result.json", b"{}")
    chain = long_chain(img)
    if filler == "deleted entries":  # nothing ends a folder early: every cluster is read
        img.fill(chain, b"\xe5" + b" " * 10 + b"\x20" + bytes(20))
    for k in range(40):
        off = img.cluster_off(chain[k])
        img.b[off : off + 32] = short_entry(b"D", 0x10, chain[k + 1], 0)
    img.mkdir(img.root, "d", cluster=chain[0])
    r = run(tmp_path, img, trace=True)
    assert r.peak < img.size // 2, f"peak {r.peak / MIB:.1f} MiB for a 4 MiB disk"
    assert r.seconds < 2.0, f"{r.seconds:.1f} s"
    assert (r.dest / "result.json").read_bytes() == b"{}"
    assert r.result.error  # the disk is damaged, and says so
    assert all(why for _, why in r.result.skipped)


def test_two_folders_on_one_cluster(tmp_path: Path) -> None:
    img = FatImage(4 * MIB)
    one = img.mkdir(img.root, "one")
    img.add_file(one, "inside.txt", b"in")
    img.mkdir(img.root, "two", cluster=one.cluster)
    img.add_file(img.root, "result.json", b"{}")
    r = run(tmp_path, img)
    assert (r.dest / "result.json").read_bytes() == b"{}"
    assert (r.dest / "one" / "inside.txt").read_bytes() == b"in"
    assert not (r.dest / "two").exists()
    assert "cycle" in dict(r.result.skipped)["two"]


# -- 2. depth, path length and order ---------------------------------------------------------
def test_deep_tree_is_skipped_and_the_rest_kept(tmp_path: Path) -> None:
    img = FatImage(4 * MIB)
    d = img.root
    for n in range(40):
        d = img.mkdir(d, "d")
        img.add_file(d, f"level{n + 1}.txt", b"x")
    img.add_file(img.root, "result.json", b'{"version": 1}\n')  # after the deep tree on disk
    r = run(tmp_path, img)
    assert (r.dest / "result.json").read_bytes() == b'{"version": 1}\n'
    assert (r.dest.joinpath(*["d"] * 32) / "level32.txt").exists()
    too_deep = "/".join(["d"] * 33)
    assert [shown for shown, _ in r.result.skipped] == [too_deep]
    assert "deeper than 32" in dict(r.result.skipped)[too_deep]
    assert r.result.readable


def test_path_over_path_max_is_skipped_and_the_rest_kept(tmp_path: Path) -> None:
    img = FatImage(4 * MIB)
    d = img.root
    for n in range(20):  # 20 names of 250 bytes: over 4096 bytes long from the 16th on
        d = img.mkdir(d, chr(ord("a") + n) * 250)
        img.add_file(d, "f.txt", b"x")
    img.add_file(img.root, "result.json", b"{}")
    r = run(tmp_path, img)
    assert (r.dest / "result.json").read_bytes() == b"{}"
    assert r.result.files[0] == "result.json"
    assert len(r.result.files) >= 14
    assert len(r.result.skipped) == 1, r.result.skipped
    shown, why = r.result.skipped[0]
    assert "PATH_MAX" in why
    assert len(shown) <= 300 and shown.isprintable()


def test_top_level_files_come_before_a_huge_folder(tmp_path: Path) -> None:
    """A folder with more entries than the extraction takes, listed before result.json (its
    entries are broken folder entries: each counts, none costs a file on the host)."""
    img = FatImage(4 * MIB)
    big = img.mkdir(img.root, "big")
    entries = [short_entry(b"E%07d   " % n, 0x10, 0, 0) for n in range(MAX_FILES + 100)]
    img.add_raw(big, entries)
    img.add_file(img.root, "result.json", b"{}")
    r = run(tmp_path, img)
    assert (r.dest / "result.json").read_bytes() == b"{}"
    assert r.result.files == ["result.json"]
    assert r.result.error and str(MAX_FILES) in r.result.error
    assert r.result.skipped[-1][0] == "(the rest of the disk)"


def test_a_cycle_does_not_stop_the_extraction(tmp_path: Path) -> None:
    img = FatImage(4 * MIB)
    loop = img.mkdir(img.root, "loop")
    img.mkdir(loop, "again", cluster=loop.cluster)
    img.add_file(loop, "in-loop.txt", b"once")
    img.add_file(img.root, "result.json", b"{}")
    sub = img.mkdir(img.root, "later")
    img.add_file(sub, "junit.xml", b"<testsuite/>")
    r = run(tmp_path, img)
    assert r.result.error and "cycle" in r.result.error
    assert (r.dest / "result.json").read_bytes() == b"{}"
    assert (r.dest / "loop" / "in-loop.txt").read_bytes() == b"once"
    assert (r.dest / "later" / "junit.xml").read_bytes() == b"<testsuite/>"
    assert not (r.dest / "loop" / "again").exists()


def test_folder_chain_looping_on_itself(tmp_path: Path) -> None:
    img = FatImage(4 * MIB)
    d = img.mkdir(img.root, "spin")
    img.fill([d.cluster], b"\xe5" + bytes(31))  # never a 0x00 entry: only the chain ends it
    img.set_fat(d.cluster, d.cluster)
    img.add_file(img.root, "result.json", b"{}")
    r = run(tmp_path, img)
    assert r.seconds < 2.0
    assert (r.dest / "result.json").read_bytes() == b"{}"
    assert "loops" in dict(r.result.skipped)["spin"]


# -- deadline ------------------------------------------------------------------------------
def test_deadline_keeps_what_was_extracted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img = FatImage(4 * MIB)
    img.add_file(img.root, "result.json", b"{}")
    for n in range(20):
        d = img.mkdir(img.root, f"d{n}")
        for m in range(100):
            img.add_file(d, f"file{m}.log", b"z" * 100)
    real_open = os.open

    def slow_open(*args, **kwargs):  # every file costs 10 ms: 20 s for them all
        time.sleep(0.01)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(os, "open", slow_open)
    r = run(tmp_path, img, deadline_s=0.3)
    monkeypatch.undo()
    assert r.seconds < 1.5, f"{r.seconds:.1f} s"
    assert (r.dest / "result.json").read_bytes() == b"{}"
    assert 1 < len(r.result.files) < 20 * 100
    assert r.result.error and "deadline" in r.result.error
    assert any("deadline" in why for _, why in r.result.skipped)


def test_deadline_already_passed(tmp_path: Path) -> None:
    img = FatImage(4 * MIB)
    img.add_file(img.root, "result.json", b"{}")
    r = run(tmp_path, img, deadline_s=0)
    assert r.result.files == []
    assert r.result.error and "deadline" in r.result.error


# -- 3. names and sizes ----------------------------------------------------------------------
def test_hostile_short_names(tmp_path: Path) -> None:
    img = FatImage(4 * MIB)
    for short in [b"A/B     TXT", b"A\\B     TXT", b"A\x00B    TXT", b"..         "]:
        img.add_file(img.root, None, b"pwned", short11=short)
    img.add_file(img.root, "ok.txt", b"ok")
    r = run(tmp_path, img)
    assert r.result.files == ["ok.txt"]
    assert [p.name for p in r.dest.iterdir()] == ["ok.txt"]
    assert len(r.result.skipped) == 3  # ".." is a folder's own entry: never listed


def test_file_and_folder_of_the_same_name(tmp_path: Path) -> None:
    img = FatImage(4 * MIB)
    img.add_file(img.root, "same", b"file")
    d = img.mkdir(img.root, "same")
    img.add_file(d, "x.txt", b"x")
    r = run(tmp_path, img)
    assert (r.dest / "same").read_bytes() == b"file"
    reasons = dict(r.result.skipped)
    assert reasons["same"] == "duplicate name"
    assert "its folder was skipped" in reasons["same/x.txt"]


def test_total_written_never_exceeds_the_limit(tmp_path: Path) -> None:
    img = FatImage(4 * MIB)
    chain = img.add_file(img.root, "a.bin", b"a" * 100_000)
    for n in range(50):  # lying entries on the same data: refused as shared, not counted twice
        img.add_file(img.root, f"b{n}.bin", size=100_000, first=chain[0])
    for n in range(50):
        img.add_file(img.root, f"c{n}.bin", b"c" * 30_000)
    r = run(tmp_path, img, total_limit=1_000_000)
    on_disk = sum(p.stat().st_size for p in r.dest.rglob("*") if p.is_file())
    assert on_disk == r.result.bytes <= 1_000_000
    assert any("total size limit" in why for _, why in r.result.skipped)
    assert (r.dest / "c29.bin").exists() and not (r.dest / "c30.bin").exists()
