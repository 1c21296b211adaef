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
    outcome.host = pool_name() or outcome.host
    write_outcome(outcome_path, outcome)
    return 0


def pool_name() -> str:
    """This execute point as the pool names it: `Machine` in the slot's ad, which the starter
    writes into the sandbox ($_CONDOR_MACHINE_AD). What the deny-list and requirements use:
    several startds on one machine share its host name, but not their Machine."""
    path = os.environ.get("_CONDOR_MACHINE_AD") or ".machine.ad"
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition("=")
                if sep and key.strip() == "Machine":
                    value = value.strip()
                    if len(value) >= 2 and value[0] == value[-1] == '"':
                        return value[1:-1][:200]
    except OSError:
        pass
    return ""
