"""What the pool tests share: vmharness as a user runs it (its output printed for the test's
log), and a folder under /tmp for run folders that nothing of is left queued afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VMH = [sys.executable, "-m", "vmharness.cli"]


def vmharness(*args: str | Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """`vmharness ARGS` from the checkout, plain text (no colour, wide), its output printed."""
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1", TERM="dumb", PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    proc = subprocess.run(
        [*VMH, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO
    )
    print(
        f"$ vmharness {' '.join(map(str, args))} -> {proc.returncode} "
        f"({time.monotonic() - t0:.1f}s)\n{proc.stdout[-5000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


def pool_work_folder(prefix: str) -> Iterator[Path]:
    """A fixture's body: a folder under /tmp that the pool's account can enter (run folders in
    it become the account's); what of it is still queued after the test is removed."""
    import htcondor2 as htcondor

    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    yield path
    schedd = htcondor.Schedd()
    constraint = f'regexp("^{path}(/|$)", VmharnessRunDir ?: Iwd ?: "")'
    if schedd.query(constraint, projection=["ClusterId"]):
        schedd.act(htcondor.JobAction.Remove, constraint)
    shutil.rmtree(path, ignore_errors=True)
