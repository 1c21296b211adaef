"""Extracting 64 MiB output disks built to stall or exhaust the host, each in a child process.

A hostile guest picks the worst geometry (512-byte clusters: about 130,000 on 64 MiB, FAT32),
then: folders whose cluster chains merge, thousands of entries sharing one long chain, a deep
tree, as many tiny files as fit, cycles (folders and chains), and folders full of orphan
long-name parts. For each disk, in a fresh child process: the extraction's time, the child's
peak RSS (os.wait4), and in a second child the peak of Python allocations (tracemalloc).
Target: under 2 s and under 256 MB per disk, whatever it holds, and result.json kept.

    .venv/bin/python bench/bench_extract_hostile.py [--work DIR] [--only NAME] [--repeat N]
                                                     [--timeout S]

--work: where disks and extracted files go (default: the temp folder; its filesystem's speed
at making files shows in the "tiny files" figure). --timeout: a child still running after
this many seconds is killed and reported as such (for comparing with slower code).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

MIB = 1 << 20
SIZE = 64 * MIB
TARGET_S = 2.0
TARGET_RSS_MIB = 256
RESULT = b'{"version": 1, "test_exit_code": 0}\n'
DELETED = b"\xe5" + b" " * 10 + b"\x20" + bytes(20)  # a deleted entry: never ends a folder

# The disk writer is the tests' (tests/fat_images.py): one place to know FAT's layout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fat_images import ATTR_FILE, FatImage, short_entry  # noqa: E402


def merging_folders() -> FatImage:
    """Folder k starts at cluster k of one chain running to the end of the disk, and holds
    folder k+1: 40 levels, each once holding the rest of the disk in memory."""

    img = FatImage(SIZE)
    img.add_file(img.root, "result.json", RESULT)
    chain = img.alloc(img.free_clusters())
    img.fill(chain, DELETED)
    for k in range(40):
        off = img.cluster_off(chain[k])
        img.b[off : off + 32] = short_entry(b"D", 0x10, chain[k + 1], 0)
    img.mkdir(img.root, "d", cluster=chain[0])
    return img


def shared_chain() -> FatImage:
    """20,000 one-byte files, all on the first cluster of one chain over the whole disk."""

    img = FatImage(SIZE)
    many = img.mkdir(img.root, "many")
    img.add_raw(many, [bytes(32)] * 20000)  # room first: the chain takes all that is left
    many.used = 2
    chain = img.alloc(img.free_clusters() - 1)
    img.write(chain[:1], b"A")
    img.add_raw(many, [short_entry(b"F%07dLOG" % n, ATTR_FILE, chain[0], 1) for n in range(19990)])
    img.add_file(img.root, "result.json", RESULT)
    return img


def deep_tree() -> FatImage:
    """5,000 nested folders, a file in each, then result.json at the top."""
    img = FatImage(SIZE)
    d = img.root
    for _ in range(5000):
        d = img.mkdir(d, "d")
        img.add_file(d, "level.log", b"x" * 100)
    img.add_file(img.root, "result.json", RESULT)
    return img


def tiny_files() -> FatImage:
    """As many one-byte files as fit (about 120,000), in folders of 60,000."""

    img = FatImage(SIZE)
    img.add_file(img.root, "result.json", RESULT)
    n = 0
    while img.free_clusters() > 5000:
        d = img.mkdir(img.root, f"batch{n // 60000}")
        img.add_raw(d, [bytes(32)] * 60000)
        d.used = 2
        entries = []
        for (c,) in (img.alloc(1) for _ in range(min(60000, img.free_clusters() - 100))):
            img.write([c], b"t")
            entries.append(short_entry(b"T%07dLOG" % n, ATTR_FILE, c, 1))
            n += 1
        img.add_raw(d, entries)
    return img


def cycles() -> FatImage:
    """A folder whose chain is a ring, folders pointing at their ancestors and at the top,
    a file on a 50,000-cluster ring, and 10,000 more entries into that ring."""

    img = FatImage(SIZE)
    img.add_file(img.root, "result.json", RESULT)
    ring_dir = img.alloc(64)
    img.fill(ring_dir, DELETED)
    img.set_fat(ring_dir[-1], ring_dir[0])
    img.mkdir(img.root, "ring", cluster=ring_dir[0])
    a = img.mkdir(img.root, "a")
    b = img.mkdir(a, "b")
    img.mkdir(b, "back-to-a", cluster=a.cluster)
    img.mkdir(b, "back-to-top", cluster=img.root.cluster)
    many = img.mkdir(img.root, "into-the-ring")
    img.add_raw(many, [bytes(32)] * 10010)
    many.used = 2
    ring = img.alloc(50000)
    img.set_fat(ring[-1], ring[0])
    img.add_file(img.root, "loop.bin", size=60 * MIB, first=ring[0])
    img.add_raw(
        many,
        [short_entry(b"R%07dBIN" % n, ATTR_FILE, ring[n * 5], 60 * MIB) for n in range(10000)],
    )
    return img


def orphan_long_names() -> FatImage:
    """32 folders of 2 MiB each (FAT's limit), full of long-name parts no entry ever ends."""

    img = FatImage(SIZE)
    img.add_file(img.root, "result.json", RESULT)
    part = bytearray(32)
    part[0], part[11], part[13] = 0x01, 0x0F, 0x42  # part 1 of a long name, checksum 0x42
    part[1:11] = "orphanpart".encode("utf-16-le")[:10]
    for n in range(32):
        chain = img.alloc(min(4096, img.free_clusters() - 10))
        img.fill(chain, bytes(part))
        img.mkdir(img.root, f"lfn{n}", cluster=chain[0])
        if img.free_clusters() < 100:
            break
    return img


DISKS: dict[str, Callable] = {
    "merging folder chains": merging_folders,
    "20,000 entries sharing one chain": shared_chain,
    "deep tree (5,000 levels)": deep_tree,
    "tiny files (~120,000)": tiny_files,
    "cycles (folders and chains)": cycles,
    "orphan long-name parts": orphan_long_names,
}


# -- the child: one extraction ---------------------------------------------------------------
def child(disk: str, dest: str, trace: bool) -> None:
    import tracemalloc

    from vmharness.images.extract import extract

    if trace:
        tracemalloc.start()
    result = extract(Path(disk), Path(dest))
    peak = tracemalloc.get_traced_memory()[1] if trace else 0
    result_json = Path(dest, "result.json")
    print(
        json.dumps(
            {
                "seconds": result.seconds,
                "files": len(result.files),
                "skipped": len(result.skipped),
                "bytes": result.bytes,
                "error": result.error,
                "result_json": result_json.is_file() and result_json.read_bytes() == RESULT,
                "traced_peak": peak,
            }
        )
    )


def run_child(disk: Path, dest: Path, trace: bool, timeout: float) -> dict:
    """Run one extraction in a fresh interpreter; its peak RSS comes from wait4, for it alone."""
    cmd = [sys.executable, __file__, "--child", str(disk), str(dest)] + (["--trace"] * trace)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    t0 = time.monotonic()
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = status  # reaped here, for its rusage: Popen must not wait again
            break
        if time.monotonic() - t0 > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            _, proc.returncode, usage = os.wait4(proc.pid, 0)
            return {"timeout": True, "wall": time.monotonic() - t0, "rss": usage.ru_maxrss << 10}
        time.sleep(0.01)
    out = proc.stdout.read() if proc.stdout else ""
    if status != 0 or not out.strip():
        return {"failed": status, "wall": time.monotonic() - t0, "rss": usage.ru_maxrss << 10}
    return {**json.loads(out), "wall": time.monotonic() - t0, "rss": usage.ru_maxrss << 10}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--only", help="run only the disks whose name contains this")
    ap.add_argument("--repeat", type=int, default=3, help="extractions per disk (median shown)")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--build", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child, args.trace)
        return
    if args.build:
        Path(args.build[1]).write_bytes(DISKS[args.build[0]]().image())
        return
    work = Path(tempfile.mkdtemp(prefix="vmh-bench-hostile-", dir=args.work))
    try:
        idle = run_child(Path("/nonexistent"), work / "idle", False, args.timeout)
        print(
            f"64 MiB disks, 512-byte clusters, extracted into {args.work}; each extraction in a "
            f"fresh child process\n(an idle child's peak RSS: {idle['rss'] / MIB:.0f} MiB; "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
            f"time: median of {args.repeat})\n"
        )
        head = f"{'disk':34} {'time s':>7} {'RSS MiB':>8} {'traced MiB':>10} {'files':>6} "
        print(head + f"{'skipped':>7}  result.json  verdict")
        ok = True
        for name in DISKS:
            if args.only and args.only not in name:
                continue
            disk = work / "output.img"
            # Built in a child too: a child's peak RSS starts at its parent's (Linux keeps it
            # across fork and exec), so this process must stay small.
            subprocess.run([sys.executable, __file__, "--build", name, str(disk)], check=True)
            runs = []
            for _ in range(args.repeat):
                runs.append(run_child(disk, work / "out", False, args.timeout))
                shutil.rmtree(work / "out", ignore_errors=True)
                if "seconds" not in runs[-1]:
                    break
            rss = max(r["rss"] for r in runs) / MIB
            if "seconds" not in runs[-1]:
                why = "killed at the timeout" if runs[-1].get("timeout") else "child failed"
                wall = f">{runs[-1]['wall']:.0f}"
                print(f"{name:34} {wall:>7} {rss:8.0f} {'-':>10}  {why}")
                ok = False
                continue
            traced = run_child(disk, work / "out", True, args.timeout)
            shutil.rmtree(work / "out", ignore_errors=True)
            last = runs[-1]
            seconds = statistics.median(r["seconds"] for r in runs)
            good = seconds < TARGET_S and rss < TARGET_RSS_MIB and last["result_json"]
            ok = ok and good
            tpeak = f"{traced['traced_peak'] / MIB:10.1f}" if "traced_peak" in traced else "-" * 10
            print(
                f"{name:34} {seconds:7.2f} {rss:8.0f} {tpeak} {last['files']:6d} "
                f"{last['skipped']:7d}  {'kept' if last['result_json'] else 'MISSING':11}  "
                f"{'ok' if good else 'MISSED'}"
            )
            if last["error"]:
                print(f"{'':34} error: {last['error'][:110]}")
        print(
            f"\ntargets: under {TARGET_S:g} s and {TARGET_RSS_MIB} MB, result.json kept: ", end=""
        )
        print(f"{'met' if ok else 'NOT met'} (load average now {os.getloadavg()[0]:.1f})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
