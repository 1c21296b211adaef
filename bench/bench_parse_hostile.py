"""Parsing hostile guest output: a 64 MiB log of each format, built from the worst shapes found.

osg-test: repeated FAIL test lines and long runs of docstring-described bad skips, the same
  FAIL block for one test again and again, 16 KiB lines that made two patterns backtrack
  (``FAIL: x<tabs>y`` headers, ``OK<spaces>x`` results after ``Ran N tests``), a BAD SKIPS list
  naming every docstring, and a summary; a quarter of the size each.
JUnit: one <testsuite> of many <testcase>, each with a <failure> (type, message, a traceback)
  and <system-out>, namespace-prefixed, plus one failure with a 4 MiB body.
TAP: ``not ok`` lines with YAML diagnostics, TODO/SKIP directives, repeated test numbers,
  16 KiB lines, subtests, and no plan.

Each parse runs in a child process that reads the file's bytes, then parses them as vmharness
does (bytes straight to the parser): wall and CPU time of the parse, the child's peak resident
memory (VmHWM, reset just before the parse where Linux allows it, else ru_maxrss) and how much
of that is above what it held before the parse (the input itself). Linearity: the time at 64 MiB
over the time at 16 MiB (4 for linear). Targets: linear (ratio under 5.5), under 10 s each at
64 MiB, and peak memory above the input under 64 MiB.

    PYTHONPATH=src .venv/bin/python bench/bench_parse_hostile.py [--sizes 16,64] [--formats tap]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

MIB = 1024 * 1024
TARGET_S = 10.0
TARGET_RATIO = 5.5
TARGET_EXTRA_MIB = 64.0
SEP1 = "=" * 70
SEP2 = "-" * 70


# -- hostile inputs -----------------------------------------------------------------------------


def _fill(unit: str, size: int) -> str:
    """`unit` repeated to about `size` characters, ending at a line end."""
    text = unit * (size // len(unit)) + unit[: size % len(unit)]
    return text[: text.rfind("\n") + 1] or unit


def osg_log(size: int) -> bytes:
    quarter = size // 4
    desc = "test_1 (osgtest.tests.test_5_m.TestM)"
    # 1. per-test lines: the same FAIL line, and distinct docstring-described bad skips
    lines: list[str] = []
    used = 0
    i = 0
    while used < quarter:
        pair = f"{desc} ... FAIL\nsetup part {i} of the system ... BADSKIP\n"
        lines.append(pair)
        used += len(pair)
        i += 1
    docs = i
    tests = "".join(lines) + "\n"
    # 2. the same FAIL block again and again
    blocks = _fill(f"{SEP1}\nFAIL: {desc}\n{SEP2}\nTraceback: boom\n\n", quarter)
    # 3. 16 KiB lines: a header with a run of tabs, a result with a run of spaces
    pad = 16 * 1024 - 32
    patho = _fill(
        f"{SEP1}\nFAIL: x{chr(9) * pad}y\n{SEP2}\nboom\n"
        f"{SEP2}\nRan 3 tests in 1.0s\n\nOK{' ' * pad}x\n",
        quarter,
    )
    # 4. a BAD SKIPS list naming every docstring, then the summary
    room = max(0, size - len(tests) - len(blocks) - len(patho) - 400)
    entries = _fill("".join(f"setup part {k} of the system not here\n" for k in range(docs)), room)
    report = f"{SEP1}\nBAD SKIPS:\n{SEP2}\n{entries}\n"
    summary = f"{SEP2}\nRan {docs * 2} tests in 1.0s\n\nFAILED (failures={docs}, badSkips={docs})\n"
    return (tests + blocks + patho + report + summary).encode()


def junit_xml(size: int) -> bytes:
    head = '<?xml version="1.0" encoding="utf-8"?>\n<ns:testsuites xmlns:ns="urn:x">\n'
    head += '<ns:testsuite name="hostile">\n'
    big = "x" * (4 * MIB)
    head += (
        '<ns:testcase classname="pkg.mod.TestBig" name="test_big">'
        f'<ns:failure message="big" type="AssertionError">{big}</ns:failure></ns:testcase>\n'
    )
    tail = "</ns:testsuite>\n</ns:testsuites>\n"
    trace = "Traceback (most recent call last):\n  File &quot;t.py&quot;, line 3\n" * 3
    case = (
        '<ns:testcase classname="pkg.mod.TestX" name="test_{i}" time="0.001">'
        '<ns:failure message="assert {i} == 0" type="AssertionError">{trace}</ns:failure>'
        "<ns:system-out>printed by test {i}</ns:system-out></ns:testcase>\n"
    )
    out = [head]
    used = len(head) + len(tail)
    i = 0
    while used < size:
        piece = case.format(i=i, trace=trace)
        out.append(piece)
        used += len(piece)
        i += 1
    out.append(tail)
    return "".join(out).encode()


def tap_stream(size: int) -> bytes:
    long_line = "not ok 7 - " + "z" * (16 * 1024)
    unit = (
        "not ok {i} - failing test {i}\n"
        "  ---\n  message: 'expected 1, got 2'\n  at: test.js:{i}\n  ...\n"
        "ok {i} - repeated number # SKIP no network\n"
        "not ok {j} - a todo # TODO later\n"
        "    ok 1 - a subtest\n"
        "ok {j} - # todoist is a comment\n"
    )
    out = ["TAP version 13\n"]
    used = 0
    i = 0
    while used < size:
        piece = unit.format(i=i, j=i + 1)
        if i % 1000 == 0:
            piece += long_line + "\n"
        out.append(piece)
        used += len(piece)
        i += 2
    return "".join(out).encode()


BUILDERS: dict[str, Callable[[int], bytes]] = {
    "osg-test": osg_log,
    "junit": junit_xml,
    "tap": tap_stream,
}


# -- the child: one parse, measured ---------------------------------------------------------------


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def child(fmt: str, path: str) -> None:
    import gc

    from vmharness.results import parse_junit, parse_osg_test, parse_tap

    parse = {"osg-test": parse_osg_test, "junit": parse_junit, "tap": parse_tap}[fmt]
    with open(path, "rb") as f:
        data = f.read()
    gc.collect()
    before = _status_kib("VmRSS")
    reset = False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident size
        reset = True
    except OSError:
        pass
    if before is None:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    wall0, cpu0 = time.perf_counter(), time.process_time()
    parsed = parse(data)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    peak = _status_kib("VmHWM") if reset else None
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "wall": wall,
                "cpu": cpu,
                "peak_mib": peak / 1024,
                "extra_mib": max(0, peak - before) / 1024,
                "tests": len(parsed.tests),
                "tests_more": getattr(parsed, "tests_more", 0),
                "problems": len(parsed.problems),
                "problems_more": sum(getattr(parsed, "problems_more", {}).values()),
                "complete": parsed.complete,
            }
        )
    )


def measure(fmt: str, size_mib: int, folder: Path) -> dict[str, object]:
    data = BUILDERS[fmt](size_mib * MIB)
    path = folder / f"{fmt}-{size_mib}.in"
    path.write_bytes(data)
    del data
    env = dict(os.environ)
    if not env.get("PYTHONPATH"):  # else as given (to measure another copy of vmharness)
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    out = subprocess.run(
        [sys.executable, __file__, "--child", fmt, str(path)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["bytes"] = path.stat().st_size
    path.unlink()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="16,64", help="sizes in MiB, the last one is checked")
    ap.add_argument("--formats", default=",".join(BUILDERS))
    ap.add_argument("--child", nargs=2, metavar=("FORMAT", "FILE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    formats = [f for f in args.formats.split(",") if f]
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    header = (
        f"{'format':9} {'MiB':>4} {'wall s':>7} {'cpu s':>7} {'peak RSS':>9} {'+ parse':>8}"
        f" {'tests kept/more':>17} {'problems kept/more':>19}"
    )
    print(header)
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-parse-") as tmp:
        for fmt in formats:
            results = {}
            for size in sizes:
                r = measure(fmt, size, Path(tmp))
                results[size] = r
                print(
                    f"{fmt:9} {r['bytes'] / MIB:4.0f} {r['wall']:7.2f} {r['cpu']:7.2f}"
                    f" {r['peak_mib']:7.0f} M {r['extra_mib']:6.0f} M"
                    f" {r['tests']:>8}/{r['tests_more']:<8}"
                    f" {r['problems']:>8}/{r['problems_more']:<10}"
                )
            last = results[sizes[-1]]
            verdict = []
            if len(sizes) > 1:
                first = results[sizes[0]]
                scale = sizes[-1] / sizes[0]
                ratio_wall = float(last["wall"]) / max(float(first["wall"]), 1e-9)
                ratio_cpu = float(last["cpu"]) / max(float(first["cpu"]), 1e-9)
                linear = ratio_cpu <= TARGET_RATIO * scale / 4
                verdict.append(
                    f"time x{ratio_wall:.2f} wall, x{ratio_cpu:.2f} cpu for x{scale:.0f} input"
                    f" ({'linear' if linear else 'NOT LINEAR'})"
                )
                ok &= linear
            fast = float(last["wall"]) < TARGET_S
            small = float(last["extra_mib"]) < TARGET_EXTRA_MIB
            verdict.append(f"{'under' if fast else 'OVER'} {TARGET_S:.0f} s")
            verdict.append(f"memory {'bounded' if small else 'OVER'} ({TARGET_EXTRA_MIB:.0f} MiB)")
            ok &= fast and small
            print(f"  {fmt}: " + "; ".join(verdict))
    print("all targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
