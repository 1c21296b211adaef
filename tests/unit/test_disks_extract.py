"""Input/output disks and the safe extraction of what an (untrusted) guest wrote (no VM).

The hostile disks are made by hand: a valid FAT16 from `mkfs.fat` (through make_output_disk),
then directory entries, long names and FAT entries written at offsets computed from its boot
sector, so every trick a guest could play is exercised byte for byte.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest

from vmharness.images.disks import make_input_disk, make_output_disk
from vmharness.images.extract import DEFAULT_FILE_LIMIT, Extraction, extract, unsafe_name

needs_tools = pytest.mark.skipif(
    not (shutil.which("mkfs.fat") and shutil.which("mke2fs")),
    reason="needs dosfstools and e2fsprogs",
)
pytestmark = needs_tools

CONDITIONS = 'version = 1\nrun_id = "0001"\n[test]\ncommand = "true"\n'


# -- helpers ---------------------------------------------------------------------------------
def tree_snapshot(root: Path, exclude: Path | None = None) -> dict[str, tuple]:
    """Every path under root (but not under exclude): type, and size and mtime of files."""
    snap: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if exclude is not None and (here == exclude or exclude in here.parents):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = here / name
            if exclude is not None and p == exclude:
                continue
            st = p.lstat()
            kind = stat.S_IFMT(st.st_mode)
            # a folder's own mtime moves when dest is made in it; its entries are listed anyway
            snap[str(p.relative_to(root))] = (
                (kind,) if stat.S_ISDIR(st.st_mode) else (kind, st.st_size, st.st_mtime_ns)
            )
    return snap


def assert_contained(dest: Path) -> None:
    """Only plain folders and regular files under dest, all really inside it."""
    if not dest.exists():
        return
    real = dest.resolve()
    for p in dest.rglob("*"):
        st = p.lstat()
        assert stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode), f"{p} is not a plain file"
        assert real in p.resolve().parents, f"{p} is outside {dest}"


def lfn_checksum(short11: bytes) -> int:
    s = 0
    for byte in short11:
        s = (((s & 1) << 7) + (s >> 1) + byte) & 0xFF
    return s


def lfn_entries(name: str, short11: bytes) -> list[bytes]:
    """The VFAT long-name entries for `name` (any characters at all), last part first."""
    raw = name.encode("utf-16-le", errors="surrogatepass")
    units = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    count = (len(units) + 12) // 13
    if len(units) % 13:
        units.append(b"\x00\x00")
    units += [b"\xff\xff"] * (count * 13 - len(units))
    csum = lfn_checksum(short11)
    out = []
    for seq in range(count, 0, -1):
        part = units[(seq - 1) * 13 : seq * 13]
        e = bytearray(32)
        e[0] = seq | (0x40 if seq == count else 0)
        e[1:11] = b"".join(part[0:5])
        e[11] = 0x0F
        e[13] = csum
        e[14:26] = b"".join(part[5:11])
        e[28:32] = b"".join(part[11:13])
        out.append(bytes(e))
    return out


def short_entry(short11: bytes, attr: int, cluster: int, size: int) -> bytes:
    assert len(short11) == 11
    e = bytearray(32)
    e[0:11] = short11
    e[11] = attr
    struct.pack_into("<H", e, 20, cluster >> 16)
    struct.pack_into("<HI", e, 26, cluster & 0xFFFF, size)
    return bytes(e)


class Fat16:
    """Just enough of a FAT16 writer to build hostile disks on top of a valid empty one."""

    EOC = 0xFFFF

    def __init__(self, path: Path) -> None:
        self.path = path
        self.b = bytearray(path.read_bytes())
        (
            self.bps,
            self.spc,
            self.reserved,
            self.nfats,
            self.root_entries,
            _total16,
            _media,
            self.fat_size,
        ) = struct.unpack_from("<HBHBHHBH", self.b, 11)
        assert self.fat_size, "expected a FAT16 disk"
        self.fat_off = self.reserved * self.bps
        self.root_off = (self.reserved + self.nfats * self.fat_size) * self.bps
        root_bytes = -(-self.root_entries * 32 // self.bps) * self.bps
        self.data_off = self.root_off + root_bytes
        self.cluster_bytes = self.bps * self.spc
        self._next = 2
        self._names = 0

    # FAT
    def set_fat(self, cluster: int, value: int) -> None:
        for n in range(self.nfats):
            struct.pack_into(
                "<H", self.b, self.fat_off + n * self.fat_size * self.bps + cluster * 2, value
            )

    def get_fat(self, cluster: int) -> int:
        return struct.unpack_from("<H", self.b, self.fat_off + cluster * 2)[0]

    def alloc(self, n: int) -> list[int]:
        clusters = []
        while len(clusters) < n:
            if self.get_fat(self._next) == 0:
                clusters.append(self._next)
            self._next += 1
        for a, b in zip(clusters, clusters[1:], strict=False):
            self.set_fat(a, b)
        self.set_fat(clusters[-1], self.EOC)
        return clusters

    def cluster_off(self, cluster: int) -> int:
        return self.data_off + (cluster - 2) * self.cluster_bytes

    def write_data(self, clusters: list[int], data: bytes) -> None:
        for i, c in enumerate(clusters):
            chunk = data[i * self.cluster_bytes : (i + 1) * self.cluster_bytes]
            off = self.cluster_off(c)
            self.b[off : off + self.cluster_bytes] = chunk.ljust(self.cluster_bytes, b"\0")

    # directories
    def _slots(self, dir_cluster: int) -> tuple[int, int]:
        if dir_cluster == 0:
            return self.root_off, self.root_entries * 32
        return self.cluster_off(dir_cluster), self.cluster_bytes

    def put_entries(self, dir_cluster: int, entries: list[bytes]) -> None:
        start, length = self._slots(dir_cluster)
        for off in range(start, start + length, 32):
            if self.b[off] == 0x00:
                assert off + 32 * len(entries) <= start + length, "directory full"
                for i, e in enumerate(entries):
                    self.b[off + 32 * i : off + 32 * (i + 1)] = e
                return
        raise AssertionError("directory full")

    def next_short(self) -> bytes:
        self._names += 1
        return f"VMH{self._names:05d}BIN".encode()

    def add_file(
        self,
        name: str | None,
        data: bytes = b"",
        *,
        dir_cluster: int = 0,
        short11: bytes | None = None,
        size: int | None = None,
        clusters: list[int] | None = None,
    ) -> list[int]:
        short11 = short11 or self.next_short()
        if clusters is None:
            clusters = self.alloc(max(1, -(-len(data) // self.cluster_bytes))) if data else []
            if data:
                self.write_data(clusters, data)
        first = clusters[0] if clusters else 0
        entries = lfn_entries(name, short11) if name is not None else []
        entries.append(short_entry(short11, 0x20, first, len(data) if size is None else size))
        self.put_entries(dir_cluster, entries)
        return clusters

    def add_dir(self, name: str, *, parent: int = 0, cluster: int | None = None) -> int:
        """A subdirectory; with `cluster`, an entry pointing at that (existing) cluster instead."""
        short11 = self.next_short()
        if cluster is None:
            (cluster,) = self.alloc(1)
            self.write_data(
                [cluster],
                short_entry(b".          ", 0x10, cluster, 0)
                + short_entry(b"..         ", 0x10, parent, 0),
            )
        entries = lfn_entries(name, short11) + [short_entry(short11, 0x10, cluster, 0)]
        self.put_entries(parent, entries)
        return cluster

    def save(self, path: Path | None = None) -> Path:
        target = path or self.path
        target.write_bytes(bytes(self.b))
        return target


@pytest.fixture
def area(tmp_path: Path):
    """A disk path and an extraction target nested deep, so `..` tricks would land in tmp_path."""
    dest = tmp_path / "rundir" / "runs" / "0001" / "output"
    dest.parent.mkdir(parents=True)
    (tmp_path / "victim.txt").write_text("must stay\n")
    (tmp_path / "rundir" / "runs" / "0001" / "console.log").write_text("console\n")
    disk = tmp_path / "work" / "output.img"
    disk.parent.mkdir()
    return disk, dest


def extract_safely(tmp_path: Path, disk: Path, dest: Path, **kwargs) -> Extraction:
    before = tree_snapshot(tmp_path, exclude=dest)
    result = extract(disk, dest, **kwargs)  # must never raise on guest data
    assert tree_snapshot(tmp_path, exclude=dest) == before, "something outside dest changed"
    assert_contained(dest)
    assert isinstance(result, Extraction)
    return result


def fresh_fat(disk: Path, size_mib: int = 16) -> Fat16:
    make_output_disk(disk, size_mib)
    return Fat16(disk)


# -- input and output disks ------------------------------------------------------------------
@pytest.mark.skipif(not shutil.which("debugfs"), reason="needs debugfs (e2fsprogs)")
def test_input_disk_holds_conditions_and_suite(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    (suite / "lib").mkdir(parents=True)
    (suite / "run.sh").write_text("#!/bin/sh\necho hello\n")
    (suite / "lib" / "data.bin").write_bytes(bytes(range(256)) * 40)
    disk = tmp_path / "input.img"
    t0 = time.perf_counter()
    make_input_disk(disk, CONDITIONS, suite)
    seconds = time.perf_counter() - t0
    print(f"make_input_disk with a suite: {seconds * 1000:.1f} ms")

    def debugfs(request: str) -> str:
        proc = subprocess.run(
            ["debugfs", "-R", request, str(disk)], capture_output=True, text=True, check=True
        )
        return proc.stdout

    assert debugfs("cat /conditions.toml") == CONDITIONS
    assert debugfs("cat /suite/run.sh") == "#!/bin/sh\necho hello\n"
    listing = debugfs("ls -l /suite/lib")
    assert "data.bin" in listing and "10240" in listing
    label = subprocess.run(["dumpe2fs", "-h", str(disk)], capture_output=True, text=True).stdout
    assert "VMHINPUT" in label
    assert seconds < 1.0


def test_input_disk_without_suite_has_only_conditions(tmp_path: Path) -> None:
    disk = tmp_path / "input.img"
    make_input_disk(disk, CONDITIONS)
    if shutil.which("debugfs"):
        ls = subprocess.run(
            ["debugfs", "-R", "ls /", str(disk)], capture_output=True, text=True, check=True
        ).stdout
        names = set(ls.split()) - {".", ".."}
        assert "conditions.toml" in names
        assert "suite" not in names
    assert not list(tmp_path.glob("vmh-input-*")), "staging folder left behind"


def test_input_disk_missing_suite_is_a_clear_error(tmp_path: Path) -> None:
    from vmharness.errors import InfraError

    with pytest.raises(InfraError, match="does not exist"):
        make_input_disk(tmp_path / "input.img", CONDITIONS, tmp_path / "nope")


@pytest.mark.parametrize("size_mib", [64, 8])
def test_output_disk_is_an_empty_fat_fast(tmp_path: Path, size_mib: int) -> None:
    disk = tmp_path / "output.img"
    t0 = time.perf_counter()
    make_output_disk(disk, size_mib)
    seconds = time.perf_counter() - t0
    print(f"make_output_disk {size_mib} MiB: {seconds * 1000:.1f} ms")
    assert seconds < 1.0
    assert disk.stat().st_size == size_mib << 20
    result = extract(disk, tmp_path / "out")
    assert result.error is None and result.files == [] and result.skipped == []


def test_output_disk_too_small_is_refused(tmp_path: Path) -> None:
    from vmharness.errors import InfraError

    with pytest.raises(InfraError):
        make_output_disk(tmp_path / "o.img", 4)


# -- round trip ------------------------------------------------------------------------------
def _mcopy_tree(disk: Path, src: Path) -> None:
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1", LC_ALL="C.UTF-8")
    items = sorted(str(p) for p in src.iterdir())
    subprocess.run(
        ["mcopy", "-s", "-i", str(disk), *items, "::/"], check=True, env=env, capture_output=True
    )


@pytest.mark.skipif(not shutil.which("mcopy"), reason="needs mtools")
@pytest.mark.parametrize("size_mib", [16, 256], ids=["fat16", "fat32"])
def test_round_trip(tmp_path: Path, size_mib: int) -> None:
    src = tmp_path / "src"
    (src / "test" / "deep" / "er").mkdir(parents=True)
    files = {
        "agent.log": b"line\n" * 1000,
        "result.json": b'{"version": 1}\n',
        "A long file name with spaces.txt": b"x",
        "empty": b"",
        "test/junit.xml": b"<testsuite/>\n",
        "test/deep/er/blob.bin": random.Random(1).randbytes(300_000),  # many clusters
    }
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    disk = tmp_path / "output.img"
    make_output_disk(disk, size_mib)
    _mcopy_tree(disk, src)
    dest = tmp_path / "out"
    result = extract_safely(tmp_path, disk, dest)
    print(f"extraction ({size_mib} MiB disk): {result.seconds * 1000:.1f} ms, {result.bytes} bytes")
    assert result.error is None, result.error
    assert result.skipped == []
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data, rel
    assert sorted(result.files) == sorted(files)
    assert result.bytes == sum(len(d) for d in files.values())
    assert result.seconds < 1.0


# -- hostile disks ---------------------------------------------------------------------------
HOSTILE_NAMES = [
    ("../../../victim.txt", "path separator"),
    ("../../etc/passwd", "path separator"),
    ("..\\..\\victim.txt", "path separator"),
    ("..", "reserved name"),
    ("evil\x1b[31mred\n.txt", "control"),
    ("bell\x07", "control"),
    ("x" * 300, "too long"),
    ("\ud800lonely", "control or invalid"),  # an unpaired surrogate from the disk
]


@pytest.mark.parametrize("name,why", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
def test_hostile_long_names_are_skipped(tmp_path: Path, area, name: str, why: str) -> None:
    disk, dest = area
    fat = fresh_fat(disk)
    fat.add_file("good.txt", b"fine\n")
    fat.add_file(name, b"pwned\n")
    fat.save()
    result = extract_safely(tmp_path, disk, dest)
    assert result.error is None
    assert (dest / "good.txt").read_text() == "fine\n"
    assert result.files == ["good.txt"]
    assert len(result.skipped) == 1
    shown, reason = result.skipped[0]
    assert why in reason
    assert all(c.isprintable() for c in shown), "the shown name must be safe to print"
    assert (tmp_path / "victim.txt").read_text() == "must stay\n"


def test_hostile_directory_name_skips_its_contents(tmp_path: Path, area) -> None:
    disk, dest = area
    fat = fresh_fat(disk)
    sub = fat.add_dir("../../..")
    fat.add_file("inside.txt", b"should not land anywhere", dir_cluster=sub)
    fat.save()
    result = extract_safely(tmp_path, disk, dest)
    assert result.files == []
    assert len(result.skipped) == 2  # the folder and the file in it, each with a reason
    assert all("separator" in why for _, why in result.skipped)


def test_control_characters_in_a_short_name(tmp_path: Path, area) -> None:
    disk, dest = area
    fat = fresh_fat(disk)
    fat.add_file(None, b"data", short11=b"A\x07B\x1b    TXT")
    fat.save()
    result = extract_safely(tmp_path, disk, dest)
    assert result.files == []
    assert result.skipped and "control" in result.skipped[0][1]


def test_cluster_chain_loop(tmp_path: Path, area) -> None:
    disk, dest = area
    fat = fresh_fat(disk)
    c1, c2 = fat.alloc(2)
    fat.set_fat(c2, c1)  # c1 -> c2 -> c1 -> ...
    fat.write_data([c1, c2], b"A" * fat.cluster_bytes * 2)
    fat.add_file("loop.bin", size=fat.cluster_bytes * 5, clusters=[c1, c2])
    fat.add_file("after.txt", b"still read\n")
    fat.save()
    t0 = time.monotonic()
    result = extract_safely(tmp_path, disk, dest)
    assert time.monotonic() - t0 < 5
    assert (dest / "after.txt").read_text() == "still read\n"
    reasons = dict(result.skipped)
    assert "loops" in reasons["loop.bin"]
    # whatever was kept of it is bounded by the two real clusters
    assert (dest / "loop.bin").stat().st_size <= fat.cluster_bytes * 2


def test_broken_chains(tmp_path: Path, area) -> None:
    disk, dest = area
    fat = fresh_fat(disk)
    (c,) = fat.alloc(1)
    fat.set_fat(c, 0xFFF0)  # points past the last cluster
    fat.add_file("outofrange.bin", size=fat.cluster_bytes * 3, clusters=[c])
    (f,) = fat.alloc(1)
    fat.set_fat(f, 0)  # chain runs into a free cluster
    fat.add_file("free.bin", size=fat.cluster_bytes * 3, clusters=[f])
    fat.add_file("nocluster.bin", size=1000, clusters=[])  # size but cluster 0
    fat.save()
    result = extract_safely(tmp_path, disk, dest)
    reasons = dict(result.skipped)
    assert set(reasons) == {"outofrange.bin", "free.bin", "nocluster.bin"}
    assert all(r for r in reasons.values())


def test_directory_cycle(tmp_path: Path, area) -> None:
    disk, dest = area
    fat = fresh_fat(disk)
    fat.add_file("first.txt", b"1\n")
    parent = fat.add_dir("parent")
    fat.add_file("in-parent.txt", b"2\n", dir_cluster=parent)
    fat.add_dir("back", parent=parent, cluster=parent)  # parent/back is parent again
    fat.save()
    t0 = time.monotonic()
    result = extract_safely(tmp_path, disk, dest)
    assert time.monotonic() - t0 < 5
    assert result.error and "cycle" in result.error
    assert (dest / "first.txt").read_text() == "1\n"
    assert result.readable  # what came before the cycle is kept


def test_self_referencing_directory(tmp_path: Path, area) -> None:
    disk, dest = area
    fat = fresh_fat(disk)
    (c,) = fat.alloc(1)
    fat.write_data([c], b"")
    fat.add_dir("me", cluster=c)
    fat.add_dir("me-again", parent=c, cluster=c)
    fat.save()
    result = extract_safely(tmp_path, disk, dest)
    assert result.error and "cycle" in result.error


def test_directory_pointing_at_the_root(tmp_path: Path, area) -> None:
    """A subdirectory with cluster 0 (the FAT16 root): never followed; no loop, no crash."""
    disk, dest = area
    fat = fresh_fat(disk)
    fat.add_file("a.txt", b"a")
    fat.add_dir("root-again", cluster=0)
    fat.save()
    result = extract_safely(tmp_path, disk, dest)
    assert result.files == ["a.txt"]
    assert not (dest / "root-again").exists()


def test_deep_nesting_is_bounded(tmp_path: Path, area) -> None:
    disk, dest = area
    fat = fresh_fat(disk)
    parent = 0
    for _ in range(40):
        parent = fat.add_dir("d", parent=parent)
    fat.save()
    result = extract_safely(tmp_path, disk, dest)
    assert result.error and "deeper" in result.error


@pytest.mark.parametrize("limits", ["default", "huge"])
def test_recorded_size_of_4_gb(tmp_path: Path, area, limits: str) -> None:
    disk, dest = area
    fat = fresh_fat(disk)
    fat.add_file("huge.bin", b"small really", size=0xFFFFFFFF)
    fat.add_file("ok.txt", b"ok")
    fat.save()
    kwargs = {} if limits == "default" else {"file_limit": 1 << 40, "total_limit": 1 << 40}
    result = extract_safely(tmp_path, disk, dest, **kwargs)
    reasons = dict(result.skipped)
    assert "huge.bin" in reasons and reasons["huge.bin"]
    assert (dest / "ok.txt").read_bytes() == b"ok"
    # never more than the disk itself holds
    assert result.bytes <= disk.stat().st_size


def test_per_file_limit(tmp_path: Path, area) -> None:
    disk, dest = area
    fat = fresh_fat(disk)
    fat.add_file("big.log", b"b" * 5000)
    fat.add_file("small.log", b"s" * 100)
    fat.save()
    result = extract_safely(tmp_path, disk, dest, file_limit=1000)
    reasons = dict(result.skipped)
    assert "limit" in reasons["big.log"]
    assert not (dest / "big.log").exists()
    assert (dest / "small.log").read_bytes() == b"s" * 100


def test_total_limit(tmp_path: Path, area) -> None:
    disk, dest = area
    fat = fresh_fat(disk)
    for n in range(4):
        fat.add_file(f"part{n}.bin", bytes([n]) * 3000)
    fat.save()
    result = extract_safely(tmp_path, disk, dest, total_limit=7000)
    assert result.bytes <= 7000
    assert len(result.files) == 2
    assert len(result.skipped) == 2
    assert all("total size limit" in why for _, why in result.skipped)
    assert sum(p.stat().st_size for p in dest.iterdir()) <= 7000


def test_default_limit_is_the_documented_one() -> None:
    assert DEFAULT_FILE_LIMIT == 256 * 1024 * 1024


def test_duplicate_names(tmp_path: Path, area) -> None:
    disk, dest = area
    fat = fresh_fat(disk)
    fat.add_file("same.txt", b"first")
    fat.add_file("same.txt", b"second")
    fat.save()
    result = extract_safely(tmp_path, disk, dest)
    assert (dest / "same.txt").read_bytes() == b"first"
    assert dict(result.skipped) == {"same.txt": "duplicate name"}


def _disk_with_files(disk: Path) -> Fat16:
    fat = fresh_fat(disk)
    fat.add_file("agent.log", b"agent\n" * 200)
    sub = fat.add_dir("test")
    fat.add_file("junit.xml", b"<testsuite/>" * 100, dir_cluster=sub)
    fat.save()
    return fat


@pytest.mark.parametrize("keep", [4096, 100, 0])
def test_truncated_image(tmp_path: Path, area, keep: int) -> None:
    disk, dest = area
    _disk_with_files(disk)
    with open(disk, "r+b") as f:
        f.truncate(keep)
    result = extract_safely(tmp_path, disk, dest)
    assert result.error and result.error.startswith("output disk unreadable")
    assert result.by_guest  # a FAT that is not sound: what the guest wrote, not the host
    assert not result.readable
    assert result.files == []


def test_image_cut_inside_the_data(tmp_path: Path, area) -> None:
    """Boot sector says 16 MiB, the file holds less: refused before reading anything."""
    disk, dest = area
    fat = _disk_with_files(disk)
    with open(disk, "r+b") as f:
        f.truncate(fat.data_off + 10 * fat.cluster_bytes)
    result = extract_safely(tmp_path, disk, dest)
    assert result.error


def test_random_bytes(tmp_path: Path, area) -> None:
    disk, dest = area
    disk.write_bytes(random.Random(7).randbytes(4 << 20))
    result = extract_safely(tmp_path, disk, dest)
    assert result.error and "boot sector" in result.error


def test_zeroed_boot_sector(tmp_path: Path, area) -> None:
    disk, dest = area
    _disk_with_files(disk)
    with open(disk, "r+b") as f:
        f.write(b"\0" * 512)
    result = extract_safely(tmp_path, disk, dest)
    assert result.error and "boot sector" in result.error


def test_lying_geometry(tmp_path: Path, area) -> None:
    disk, dest = area
    fat = _disk_with_files(disk)
    for offset, fmt, value in [
        (11, "<H", 3),
        (13, "<B", 0),
        (13, "<B", 3),
        (16, "<B", 0),
        (22, "<H", 0),
        (19, "<H", 0xFFFF),
    ]:
        b = bytearray(fat.b)
        struct.pack_into(fmt, b, offset, value)
        if offset == 19:
            struct.pack_into("<I", b, 32, 0)
        disk.write_bytes(bytes(b))
        target = dest.with_name(f"output-{offset}-{value}")
        result = extract_safely(tmp_path, disk, target)
        assert result.error, (offset, value)


def test_fuzzed_disks_never_crash(tmp_path: Path, area) -> None:
    """Random damage to the FAT, the root directory and the data of a real disk."""
    disk, dest = area
    fat = _disk_with_files(disk)
    good = bytes(fat.b)
    metadata_end = fat.data_off + 8 * fat.cluster_bytes
    t0 = time.monotonic()
    for seed in range(40):
        rng = random.Random(seed)
        b = bytearray(good)
        for _ in range(rng.choice([1, 10, 200])):
            b[rng.randrange(512, metadata_end)] = rng.randrange(256)
        disk.write_bytes(bytes(b))
        target = dest.with_name(f"output-{seed}")
        result = extract_safely(tmp_path, disk, target)
        for shown, why in result.skipped:
            assert why, shown
    assert time.monotonic() - t0 < 30


# -- names -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["result.json", "A long name.txt", "ünïcødé", "x" * 255])
def test_safe_names_are_accepted(name: str) -> None:
    assert unsafe_name(name) is None


@pytest.mark.parametrize(
    "name", ["", ".", "..", "a/b", "a\\b", "a\0b", "tab\there", "\x7f", "é" * 200, "bad\ufffd"]
)
def test_unsafe_names_are_refused(name: str) -> None:
    assert unsafe_name(name)
