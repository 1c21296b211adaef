"""The HTML report in real headless Chromium: screenshot the page and check each matrix cell's
colour at the cell's own position, and check the details panel runs under the page's CSP.

Cell positions come from the browser itself: a probe copy of the page (CSP removed, a script
added that writes every cell's bounding box into the DOM) is loaded with --dump-dom at the same
window size as the screenshot. Skips when chromium is not installed.

`VMHARNESS_UPDATE_SCREENSHOT=1 pytest -m browser tests/browser/test_report_browser.py` also
writes the checked screenshot to docs/report.png (the README shows it).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from reportdata import make_result, make_run

from vmharness.report import STATUS_COLOURS, ReportInput, write_all
from vmharness.results.model import Problem, RunResult
from vmharness.results.model import TestCounts as Counts
from vmharness.spec import Run

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

CHROMIUM = next(
    (p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).exists()),
    None,
)
WIDTH, HEIGHT = 1200, 800
DOCS_PNG = Path(__file__).resolve().parents[2] / "docs" / "report.png"

PLATFORMS = ["rocky_8.x86_64", "alma_9.x86_64", "centos_stream_9.x86_64", "alma_10.x86_64"]
SOURCES = ["24; osg", "24; osg > osg-testing", "25; osg-testing, osg-upcoming-testing"]
SETS = {
    "Compute Entrypoint (Condor)": ("osg-ce-condor", "htcondor-ce-view"),
    "Worker Node (privileged)": ("osg-wn-client", "apptainer"),
    "XRootD": ("xrootd", "xrootd-client", "osg-xrootd"),
    "OSDF Cache and Origin": ("osdf-cache", "osdf-origin"),
}
# (platform index, source index, package set index) -> status; everything else passes.
NOT_PASSING = {
    (0, 0, 0): "fail",
    (1, 0, 0): "fail",
    (0, 1, 2): "install",
    (2, 1, 1): "update",
    (3, 0, 3): "cleanup",
    (1, 2, 0): "ignore",
    (2, 2, 0): "ignore",
    (3, 1, 2): "timeout",
    (2, 0, 3): "died",
    (1, 1, 1): "fail",
    (3, 2, 1): "pending",
    (3, 2, 2): "pending",
}
MISSING = {(3, 2, 3), (0, 2, 3)}  # combinations not in the matrix: empty cells


def nightly_example(run_dir: Path) -> tuple[ReportInput, ReportInput]:
    """A small nightly that looks like the OSG's: 4 EL platforms x 3 sources x 4 package sets,
    mixed statuses, two runs still going; plus last night's results to compare with."""
    entries: list[tuple[Run, RunResult | None]] = []
    previous: list[tuple[Run, RunResult | None]] = []
    n = 0
    for si, source in enumerate(SOURCES):
        for ki, (pset, packages) in enumerate(SETS.items()):
            for pi, platform in enumerate(PLATFORMS):
                if (pi, si, ki) in MISSING:
                    continue
                n += 1
                run = make_run(f"{n:04d}", platform, source, pset, packages)
                (run_dir / "runs" / run.id).mkdir(parents=True, exist_ok=True)
                status = NOT_PASSING.get((pi, si, ki), "pass")
                ok, skip = 150 + 7 * ki + 3 * pi, 12 + ki
                if status == "pending":
                    result = None
                else:
                    result = make_result(run, status, ok=ok, skip=skip)
                    if status == "fail" and ki == 0:
                        result.problems.append(
                            Problem(
                                "test_55_condorce",
                                "test_05_pbs_trace",
                                "TestCondorCE",
                                "FAIL",
                                "-",
                                '<script>alert("guest")</script>\x1b[31m boom',
                            )
                        )
                        result.counts = Counts(ok=ok, fail=2, skip=skip + 1)
                        result.reason = "2 tests failed: condor_ce_trace"
                entries.append((run, result))
                was = "fail" if (pi, si, ki) in ((1, 1, 1), (0, 0, 3)) else "pass"
                previous.append((run, make_result(run, was, ok=ok, skip=skip)))
    current = ReportInput(
        title="OSG 24/25 nightly (example)",
        run_dir=run_dir,
        started="2025-06-02T02:00:00",
        backend="condor",
        entries=entries,
        generated="2025-06-02T04:47:12",
    )
    last = ReportInput(
        title="nightly 2025-06-01",
        run_dir=run_dir,
        started="2025-06-01T02:00:00",
        backend="condor",
        entries=previous,
    )
    return current, last


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={WIDTH},{HEIGHT}",
        "--force-device-scale-factor=1",
        "--hide-scrollbars",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


PROBE = """<script>
window.addEventListener("load", function () {
  var cells = [];
  document.querySelectorAll("a.r").forEach(function (a) {
    var b = a.getBoundingClientRect();
    cells.push({id: a.getAttribute("data-id"), cls: a.className,
                x: b.left, y: b.top, w: b.width, h: b.height});
  });
  var pre = document.createElement("pre");
  pre.id = "probe";
  pre.style.display = "none";
  pre.textContent = JSON.stringify({dpr: window.devicePixelRatio, cells: cells});
  document.body.appendChild(pre);
});
</script>"""


def _probe_boxes(page: Path, profile: Path) -> dict:
    text = page.read_text(encoding="utf-8")
    text = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", text, count=1)
    probe = page.with_name("probe.html")
    probe.write_text(text.replace("</body>", PROBE + "</body>", 1), encoding="utf-8")
    out = _chromium("--dump-dom", probe.as_uri(), profile=profile)
    m = re.search(r'<pre id="probe"[^>]*>(.*?)</pre>', out.stdout, re.S)
    assert m, f"probe did not run: {out.stderr[-2000:]}"
    return json.loads(html.unescape(m.group(1)))


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    h = hex_colour.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    pytest.importorskip("PIL")
    tmp = tmp_path_factory.mktemp("browser")
    run_dir = tmp / "run"
    current, previous = nightly_example(run_dir)
    paths = write_all(current, previous=previous)
    png = tmp / "report.png"
    out = _chromium(f"--screenshot={png}", paths["html"].as_uri(), profile=tmp / "profile")
    assert png.exists(), f"no screenshot: {out.stderr[-2000:]}"
    boxes = _probe_boxes(paths["html"], tmp / "profile")
    return current, paths, png, boxes, tmp


def test_screenshot_cells_have_their_status_colours(rendered):
    from PIL import Image

    current, _paths, png, boxes, _tmp = rendered
    image = Image.open(png).convert("RGB")
    assert image.size == (WIDTH, HEIGHT)
    scale = boxes["dpr"]
    status_by_id = {run.id: (res.status if res else "pending") for run, res in current.entries}
    cells = boxes["cells"]
    assert len(cells) == len(current.entries)
    checked = set()
    for cell in cells:
        x0, y0 = cell["x"] * scale, cell["y"] * scale
        x1, y1 = (cell["x"] + cell["w"]) * scale, (cell["y"] + cell["h"]) * scale
        assert x1 <= WIDTH and y1 <= HEIGHT, f"cell {cell['id']} is outside the screenshot"
        status = status_by_id[cell["id"]]
        want = _rgb(STATUS_COLOURS[status][0])
        # Inside the cell, clear of its rounded corners and of its centred text.
        for px, py in ((x0 + 3, y0 + 3), (x1 - 4, y0 + 3), (x0 + 3, y1 - 4), (x1 - 4, y1 - 4)):
            got = image.getpixel((int(px), int(py)))
            assert all(abs(g - w) <= 8 for g, w in zip(got, want, strict=True)), (
                f"cell {cell['id']} ({status}) at {int(px)},{int(py)}: {got} != {want}"
            )
        checked.add(status)
    assert checked == set(STATUS_COLOURS)  # every status (and pending) was on screen
    if os.environ.get("VMHARNESS_UPDATE_SCREENSHOT") == "1":
        DOCS_PNG.parent.mkdir(exist_ok=True)
        shutil.copyfile(png, DOCS_PNG)


def test_details_panel_runs_under_the_page_csp(rendered):
    current, paths, _png, _boxes, tmp = rendered
    run, _result = next(
        (r, res) for r, res in current.entries if res is not None and len(res.problems) == 3
    )
    out = _chromium(
        "--dump-dom", paths["html"].as_uri() + f"#run-{run.id}", profile=tmp / "profile"
    )
    dom = out.stdout
    panel = re.search(r'<aside id="panel"([^>]*)>(.*?)</aside>', dom, re.S)
    assert panel, out.stderr[-2000:]
    assert "hidden" not in panel.group(1)  # the page's script ran (its CSP hash matches)
    body = panel.group(2)
    assert "rocky_8.x86_64 / 24; osg / Compute Entrypoint (Condor)" in html.unescape(body)
    assert "test_55_condorce.TestCondorCE.test_05_pbs_trace" in body
    # The guest's markup is text in the panel, never an element.
    assert '&lt;script&gt;alert("guest")&lt;/script&gt;' in body
    assert "<script" not in body and "\x1b" not in body
    assert f'href="runs/{run.id}/"' in body
