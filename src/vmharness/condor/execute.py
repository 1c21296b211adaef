"""The execute side of a `--style qemu` job: boot one prepared VM exactly as the local engine
does (vm/qemu.py), and write how it ended to outcome.json for the POST script.
"""

from __future__ import annotations

import os
import platform as host_platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..vm.accel import ACCEL_ENV, choose_accelerator
from ..vm.job import VMOutcome
from ..vm.qemu import LocalVMs
from .job import OUTCOME_FILE, job_in, read_job, write_outcome


# -- execute side -------------------------------------------------------------------------------
def run_one(job_file: Path, say: Callable[[str], None] = lambda _m: None) -> int:
    """Boot the VM a job description names, as the local backend does; write outcome.json.

    Runs in the job's sandbox. Everything but the output disk, the console log and
    outcome.json is removed afterwards, so nothing else travels back.
    """
    sandbox = job_file.resolve().parent
    outcome_path = sandbox / OUTCOME_FILE
    outcome_path.unlink(missing_ok=True)
    t0 = time.monotonic()
    try:
        job = job_in(read_job(job_file), sandbox)
        job.console_log.touch()
        if job.kernel is not None:
            cache = Path(
                os.environ.get("VMHARNESS_CACHE")
                or Path(tempfile.gettempdir()) / f"vmharness-{os.getuid()}"
            )
            accel = choose_accelerator(job.kernel, cache, say=say)
        else:  # booting the image's own loader: no kernel to probe KVM with
            accel = "kvm" if os.environ.get(ACCEL_ENV) == "kvm" else "tcg"
            say(f"accelerator {accel} (no kernel to probe KVM with)")
        outcome = LocalVMs(accel)(job)
    except Exception as exc:  # noqa: BLE001 - whatever it was, the submit side must learn it
        outcome = VMOutcome(
            ended="error",
            seconds=time.monotonic() - t0,
            accelerator="",
            reason=f"vmharness run-one failed: {exc}",
            host=host_platform.node(),
        )
    finally:
        shutil.rmtree(sandbox / "vm", ignore_errors=True)
    write_outcome(outcome_path, outcome)
    return 0
