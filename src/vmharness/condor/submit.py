"""The HTCondor backend: a run folder's runs as one DAG on a pool (see docs/condor.md).

Per run the DAG has a chain
    prep-<id>  local universe: the run's input and output disks (CATEGORY prep, MAXJOBS, RETRY)
    vm-<id>    the VM job (--style vm: VM universe; --style qemu: vanilla job running
               `vmharness run-one`), with a POST script that decides the verdict and records it
               in the run database, exiting non-zero only for infrastructure failures (`died`),
               and a PRE script that makes fresh disks when DAGMan retries the node
and one FINAL node, report, writes the reports. Nodes and POST scripts are in nodes.py.

Layout added to the run folder:
    condor/runs.dag, prep.sub, vm.sub, report.sub   the DAG (htcondor2.dags' writer)
    condor/plan.json                                style, images: what the nodes need
    condor/run-one.sh                               the --style qemu job's executable
    condor/runs.dag.dagman.out, .nodes.log, ...     DAGMan's own files
    condor/logs/                                    prep nodes' stdout/stderr
    images/<content name>                           base images (default store; --image-store)
    runs/<id>/condor-job.log                        the VM job's event log
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import hosts
from ..engine.attempt import ImageRef
from ..errors import InfraError, UsageError
from ..spec import Run
from ..wire.files import replacing, sha256_file
from ..wire.formats import OUTCOME
from . import deny, job, status
from .events import bindings
from .job import (
    CONDOR_DIR,
    DAG_FILE,
    JOB_FILE,
    JOB_LOG,
    OUTCOME_FILE,
    RETURNED_OUTPUT,
    SYSTEM_PATH,
    TIMEOUT_HOLD_SUBCODE,
    Plan,
    PlanImage,
    write_plan,
)
from .nodes import POST_FAILED

STYLES = ("vm", "qemu")
DELIVERIES = ("transfer", "shared", "url")
IMAGE_STORE = "images"
QEMU_OVERHEAD_MIB = 256  # qemu's own memory beyond the guest's (see VM-GAHP.md, pitfalls)
JOB_MARGIN_S = 600  # --style qemu: run-one stops the VM itself; the hold is only a backstop
# --style vm on vmharness's own VM helper: it stops the VM at the wall-clock timeout itself (so
# the console and the partial output come back); the hold waits for the starter to notice.
VM_HELPER_MARGIN_S = 150
VM_HELPER_ATTR = "VmharnessVMGahp"  # machine ads of execute points with vmharness-vm-gahp
VM_WALL_ATTR = "VmharnessWallTimeout"  # job ad: the wall-clock timeout the helper enforces
# Holds a retry can fix: file transfer failures (12 output, 13 input) except a file that is
# not there (errno 2) or not readable (13), and the host-side wall-clock hold is never released.
RETRYABLE_HOLDS = (
    "(HoldReasonCode == 12 || (HoldReasonCode == 13 && "
    "HoldReasonSubCode != 2 && HoldReasonSubCode != 13))"
)
POOL_ENV_PYTHON = "VMHARNESS_POOL_PYTHON"
POOL_ENV_DAGMAN = "VMHARNESS_POOL_DAGMAN"
POOL_ENV_USER = "VMHARNESS_POOL_USER"


@dataclass
class SubmitOptions:
    style: str = "vm"
    pool: str | None = None  # collector address; None: the local schedd of the configuration
    boot: str = "kernel"  # --style qemu: kernel (direct, fast) | disk (as VM universe does)
    delivery: str = "transfer"  # how the base image reaches execute points
    image_store: Path | None = None  # default: RUNDIR/images
    image_url: str | None = None  # with delivery url: where the store is published
    retries: int = 2  # DAGMan RETRY of the VM node (infrastructure failures only)
    release_max: int = 3  # periodic_release while NumJobStarts is below this
    prep_maxjobs: int = 20
    prep_retries: int = 3
    held_max_s: int = 1800  # a job held this long (not released) is removed: the run died
    queue_max_s: int = 12 * 3600  # any job in the queue this long is removed
    requirements: str | None = None
    node_python: str = ""  # submit side: prep, POST, FINAL
    job_python: str = ""  # execute side (--style qemu)
    owner: str | None = None  # account the pool runs our jobs as (files must be its)
    accel: str | None = None  # VMHARNESS_ACCEL for --style qemu jobs
    # --style vm: run only where vmharness's VM helper is (it brings back console.log and
    # outcome.json, and enforces the wall-clock timeout). None: decided by submit from the pool.
    vm_helper: bool | None = None
    package_proxy: str | None = None  # a site's caching HTTP proxy for apt in the guests
    hosts_file: Path | None = None  # the execute-host deny-list (None: hosts.default_path())
    deny_policy: str | None = None  # hosts.Policy text (None: $VMHARNESS_DENY, else defaults)
    deny: bool = True  # keep and follow the deny-list at all
    hosts_file_given: bool = False  # by --hosts-file or $VMHARNESS_HOSTS_FILE (else the default)

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise UsageError(f"--style must be one of {', '.join(STYLES)}")
        if self.delivery not in DELIVERIES:
            raise UsageError(f"--image-delivery must be one of {', '.join(DELIVERIES)}")
        if self.delivery == "url" and not self.image_url:
            raise UsageError(
                "--image-delivery url needs --image-url (where the image store "
                "is published, e.g. https://host/vmharness-images/)"
            )
        if self.delivery == "shared" and self.style == "vm":
            raise UsageError(
                "--style vm writes to its vda (the base image); it must travel "
                "with the job (--image-delivery transfer or url), not be shared",
                hint="use --style qemu with a shared image store, where each run "
                "writes to its own overlay",
            )
        default_py = os.environ.get(POOL_ENV_PYTHON) or sys.executable
        self.node_python = self.node_python or default_py
        self.job_python = self.job_python or default_py
        if self.owner is None and os.geteuid() == 0:
            self.owner = os.environ.get(POOL_ENV_USER) or None
        if self.deny:
            self.hosts_file_given = self.hosts_file is not None or bool(
                os.environ.get(hosts.HOSTS_FILE_ENV)
            )
            self.hosts_file = (self.hosts_file or hosts.default_path()).absolute()
            if self.deny_policy is None:
                self.deny_policy = os.environ.get(hosts.POLICY_ENV, "")
            hosts.Policy.parse(self.deny_policy)  # a bad one is a usage error now, not in POST
        if self.accel is None:
            self.accel = os.environ.get("VMHARNESS_ACCEL") or None


@dataclass(frozen=True)
class StagedImage:
    """A platform's base image under its content-addressed name in the image store."""

    ref: ImageRef  # paths in the store
    name: str  # content-addressed file name of the disk
    kernel_name: str | None
    initrd_name: str | None
    size_bytes: int

    def for_job(self, opts: SubmitOptions, path: Path | None) -> str | None:
        """How the job's sandbox names a staged file (relative: transferred; absolute: shared)."""
        if path is None:
            return None
        return str(path) if opts.delivery == "shared" else path.name

    def inputs(self, opts: SubmitOptions, with_kernel: bool) -> list[str]:
        """transfer_input_files entries that bring the image into the sandbox."""
        if opts.delivery == "shared":
            return []
        paths = [self.ref.disk] + ([self.ref.kernel, self.ref.initrd] if with_kernel else [])
        if opts.delivery == "url":
            base = opts.image_url.rstrip("/") + "/"  # type: ignore[union-attr]
            return [base + p.name for p in paths if p is not None]
        return [str(p) for p in paths if p is not None]


@dataclass
class Submitted:
    run_dir: Path
    dag_file: Path
    cluster: int
    runs: int
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # warnings for the user


# -- the pool ---------------------------------------------------------------------------------
def connect(pool: str | None):
    """The schedd to submit to, checked to answer now: InfraError (exit 3) when it does not."""
    htcondor = bindings()
    where = f"the pool at {pool}" if pool else "the local schedd"
    hint = (
        "is the pool up? (`scripts/condor-pool status`; CONDOR_CONFIG="
        f"{os.environ.get('CONDOR_CONFIG', 'unset')}); give a collector with --pool ADDRESS"
    )
    try:
        if pool:
            ad = htcondor.Collector(pool).locate(htcondor.DaemonType.Schedd)
            schedd = htcondor.Schedd(ad)
        else:
            schedd = htcondor.Schedd()
        schedd.query(constraint="false", projection=["ClusterId"])
    except Exception as exc:  # noqa: BLE001 - the bindings raise several kinds
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InfraError(f"cannot reach {where}: {detail}", hint=hint) from None
    return schedd


def vm_slots(pool: str | None) -> tuple[int, int] | None:
    """(slots offering VM universe, how many of them with vmharness's own helper), or None
    when the collector cannot say."""
    htcondor = bindings()
    try:
        ads = htcondor.Collector(pool or None).query(
            htcondor.AdType.Startd, constraint="HasVM =?= true", projection=["Name", VM_HELPER_ATTR]
        )
    except Exception:  # noqa: BLE001 - only a hint; the submit itself decides
        return None
    return len(ads), sum(1 for ad in ads if ad.get(VM_HELPER_ATTR) is not None)


def vm_universe_warning(pool: str | None, slots: tuple[int, int] | None = None) -> str | None:
    """A warning when no execute point of the pool offers VM universe (--style vm jobs would
    stay idle); None when one does or the collector cannot say."""
    slots = slots if slots is not None else vm_slots(pool)
    if slots is None or slots[0]:
        return None
    return (
        "no execute point of this pool offers VM universe (no slot has HasVM): the VM jobs "
        "will wait in the queue until one does (install vmharness-vm-gahp there, see "
        "docs/condor.md); --style qemu runs where qemu is installed"
    )


# -- images -----------------------------------------------------------------------------------
def stage_images(
    images: dict[str, ImageRef], store: Path, content_names: dict[Path, str] | None = None
) -> dict[str, StagedImage]:
    """Put each platform's image into `store` under a content-addressed name (hard link when
    the store is on the cache's filesystem, else a copy; a name already there is reused)."""
    store.mkdir(parents=True, exist_ok=True)
    names = content_names or {}
    staged: dict[str, StagedImage] = {}
    done: dict[Path, StagedImage] = {}
    for platform, ref in images.items():
        if ref.disk in done:
            staged[platform] = done[ref.disk]
            continue
        name = names.get(ref.disk) or _content_name(ref.disk)
        stem = name.rsplit(".", 1)[0]
        disk = _put(ref.disk, store / name)
        kernel = _put(ref.kernel, store / f"{stem}.vmlinuz") if ref.kernel else None
        initrd = _put(ref.initrd, store / f"{stem}.initrd.img") if ref.initrd else None
        s = StagedImage(
            ref=ImageRef(
                disk=disk,
                kernel=kernel,
                initrd=initrd,
                cmdline=ref.cmdline,
                apt_source=ref.apt_source,
                suite=ref.suite,
                label=ref.label,
            ),
            name=name,
            kernel_name=kernel.name if kernel else None,
            initrd_name=initrd.name if initrd else None,
            size_bytes=disk.stat().st_size,
        )
        staged[platform] = done[ref.disk] = s
    return staged


def cache_content_names(cache) -> dict[Path, str]:
    """disk path -> content-addressed name, for the images of a vmharness image cache."""
    return {i.disk: i.content_name for i in cache.list()}


def _content_name(path: Path) -> str:
    stem = path.name.split(".", 1)[0]
    return f"{stem}-{sha256_file(path)[:16]}.qcow2"


def _put(src: Path, dest: Path) -> Path:
    if dest.exists():
        return dest  # content-addressed: the same name is the same bytes
    with replacing(dest) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
            tmp.chmod(0o444)
    return dest


# -- the DAG ----------------------------------------------------------------------------------
def _node_names(run_ids: list[str]):
    from htcondor2.dags import NodeNameFormatter

    index = {rid: i for i, rid in enumerate(run_ids)}

    class RunNodeNames(NodeNameFormatter):
        """Node names like vm-0007: the layer and the run id (POST scripts read it back)."""

        def generate(self, layer_name: str, node_index: int) -> str:
            return f"{layer_name}-{run_ids[node_index]}"

        def parse(self, node_name: str) -> tuple[str, int]:
            layer, _, rid = node_name.rpartition("-")
            return layer, index[rid]

    return RunNodeNames()


def _policy(opts: SubmitOptions, wall_macro: str) -> dict[str, str]:
    """periodic_hold/release/remove: see docs/condor.md, 'Job policy'."""
    started = (
        "ifThenElse((JobCurrentStartExecutingDate ?: 0) >= (JobCurrentStartDate ?: 0), "
        "JobCurrentStartExecutingDate, EnteredCurrentStatus)"
    )
    timeout_hold = f"(HoldReasonCode == 3 && HoldReasonSubCode == {TIMEOUT_HOLD_SUBCODE})"
    return {
        "periodic_hold": f"JobStatus == 2 && (time() - {started}) > {wall_macro}",
        "periodic_hold_reason": f'strcat("vmharness: VM still running after its wall-clock '
        f'timeout of ", {wall_macro}, "s")',
        "periodic_hold_subcode": str(TIMEOUT_HOLD_SUBCODE),
        "periodic_release": f"NumJobStarts < {opts.release_max} && "
        f"(NumHolds ?: 0) < {2 * opts.release_max} && {RETRYABLE_HOLDS} "
        f"&& (time() - EnteredCurrentStatus) > 10",
        "periodic_remove": f"(time() - QDate) > {opts.queue_max_s} || (JobStatus == 5 && "
        f"({timeout_hold} || (time() - EnteredCurrentStatus) > "
        f"{opts.held_max_s}))",
    }


def _tag(run_dir: Path, style: str, run_macro: str | None = None) -> dict[str, str]:
    tags = {"My.VmharnessRunDir": json.dumps(str(run_dir)), "My.VmharnessStyle": f'"{style}"'}
    if run_macro:
        tags["My.VmharnessRun"] = f'"{run_macro}"'
    return tags


def vm_description(run_dir: Path, opts: SubmitOptions) -> dict[str, str]:
    """The VM node's submit description; per-run values come from the node's VARS."""
    logs = f"{run_dir}/runs/$(vmh_run)"
    common = {
        "initialdir": f"{logs}/work",
        "log": f"{logs}/{JOB_LOG}",
        "should_transfer_files": "YES",
        "when_to_transfer_output": "ON_EXIT",
        "request_cpus": "$(vmh_cpus)",
        "request_memory": "$(vmh_request_memory)",
        "request_disk": "$(vmh_request_disk)",
        **_policy(opts, "$(vmh_wall)"),
        **_tag(run_dir, opts.style, "$(vmh_run)"),
    }
    if opts.requirements:
        common["requirements"] = opts.requirements
    if opts.deny:
        common["requirements"] = " && ".join(
            [f"({opts.requirements})"] * bool(opts.requirements) + [deny.REQUIREMENT]
        )
        # Every execute point denied (deny.sub says so): an idle job could never run.
        common["periodic_remove"] = (
            f"({common['periodic_remove']}) || "
            f"(JobStatus == 1 && MY.{deny.ALL_DENIED_ATTR} =?= true)"
        )
    if opts.style == "vm":
        vm = {
            "universe": "vm",
            "executable": "vmharness-$(vmh_run)",  # only a label: the VM runs from its disk
            "vm_type": "kvm",
            "vm_memory": "$(vmh_memory)",
            "vm_vcpus": "$(vmh_cpus)",
            "vm_networking": "$(vmh_networking)",
            "vm_disk": "$(vmh_vm_disk)",
            "vm_no_output_vm": "false",
            "transfer_input_files": "$(vmh_inputs)",
            "transfer_output_files": "output.img",
            "transfer_output_remaps": _remaps(logs, console=False),
            **common,
        }
        if opts.vm_helper:
            # vmharness-vm-gahp writes the serial console and how the VM ended into the
            # sandbox, and stops the VM at the wall-clock timeout itself
            mine = f"(TARGET.{VM_HELPER_ATTR} =!= undefined)"
            rest = common.get("requirements")  # the user's and the deny-list's
            vm["requirements"] = mine + (f" && ({rest})" if rest else "")
            vm["transfer_output_files"] = f"output.img,console.log,{OUTCOME_FILE}"
            vm["transfer_output_remaps"] = _remaps(logs)
            vm[f"My.{VM_WALL_ATTR}"] = "$(vmh_vm_wall)"
        return vm
    env = f"PATH={SYSTEM_PATH}" + (f" VMHARNESS_ACCEL={opts.accel}" if opts.accel else "")
    return {
        "universe": "vanilla",
        "executable": f"{run_dir}/{CONDOR_DIR}/run-one.sh",
        "transfer_executable": "true",
        "environment": f'"{env}"',
        "transfer_input_files": "$(vmh_inputs)",
        "transfer_output_files": f"output.img,console.log,{OUTCOME_FILE}",
        "transfer_output_remaps": _remaps(logs),
        **common,
    }


def _remaps(logs: str, console: bool = True) -> str:
    """The console beside the run's logs; the output disk under another name than the empty
    one the job is given (job.RETURNED_OUTPUT)."""
    pairs = [f"output.img = {RETURNED_OUTPUT}"] + [f"console.log = {logs}/console.log"] * console
    return '"' + "; ".join(pairs) + '"'


def _vm_vars(run: Run, image: StagedImage, opts: SubmitOptions) -> dict[str, str]:
    with_kernel = opts.style == "qemu" and opts.boot == "kernel" and image.ref.kernel is not None
    inputs = ["input.img", "output.img"] + image.inputs(opts, with_kernel)
    if opts.style == "qemu":
        inputs.insert(0, JOB_FILE)
    disk_kib = (
        (image.size_bytes if opts.delivery != "shared" else 0) // 1024
        + (run.vm.output_size_mib + 64) * 1024
        + 65536
    )
    margin = JOB_MARGIN_S if opts.style == "qemu" else VM_HELPER_MARGIN_S if opts.vm_helper else 0
    wall = run.wall_timeout_s + margin
    v = {
        "vmh_run": run.id,
        "vmh_cpus": str(run.vm.cpus),
        "vmh_memory": str(run.vm.memory_mib),
        "vmh_request_memory": str(run.vm.memory_mib + QEMU_OVERHEAD_MIB),
        "vmh_request_disk": str(disk_kib),
        "vmh_wall": str(wall),
        "vmh_inputs": ",".join(inputs),
    }
    if opts.style == "vm":
        v["vmh_networking"] = "true" if run.vm.network != "none" else "false"
        v["vmh_vm_disk"] = f"{image.name}:vda:w:qcow2,input.img:vdb:r:raw,output.img:vdc:w:raw"
        v["vmh_vm_wall"] = str(run.wall_timeout_s)
    return v


def _node_description(run_dir: Path, opts: SubmitOptions, args: str, out: str) -> dict[str, str]:
    return {
        "universe": "local",
        "executable": opts.node_python,
        "arguments": f'"-m vmharness.cli dag-node {args}"',
        "output": f"{out}.out",
        "error": f"{out}.err",
        "environment": f'"PATH={SYSTEM_PATH} PYTHONUNBUFFERED=1"',
        **_tag(run_dir, opts.style),
    }


RUN_ONE_SH = """#!/bin/sh
# vmharness --style qemu job: boot the VM that job.json describes, as the local backend does.
# Only output.img, console.log and outcome.json go back; outcome.json always exists.
# The execute point's PATH first (a site may put its own qemu there), then the usual folders.
export PATH="$PATH:{path}"
touch console.log
rm -f outcome.json
{python} -m vmharness.cli run-one job.json 2>run-one.err
rc=$?
if [ ! -s outcome.json ]; then
    ad=${{_CONDOR_MACHINE_AD:-.machine.ad}}
    host=$(sed -n 's/^Machine = "\\(.*\\)"$/\\1/p' "$ad" 2>/dev/null)
    host=${{host:-$(hostname)}}
    {{ echo "--- vmharness run-one failed (exit $rc) on $host; its stderr:"
       tail -n 40 run-one.err; }} >>console.log
    printf '{{"format": {outcome_format}, "ended": "error", "seconds": 0, "accelerator": "", '\\
'"host": "%s", "reason": "vmharness run-one failed with exit code %s on %s; '\\
'see console.log"}}\\n' \\
        "$host" "$rc" "$host" >outcome.json
fi
exit 0
"""


def _plan_image(s: StagedImage, opts: SubmitOptions) -> PlanImage:
    disk = s.for_job(opts, s.ref.disk)
    assert disk is not None
    return PlanImage(
        disk=s.ref.disk,
        kernel=s.ref.kernel,
        initrd=s.ref.initrd,
        cmdline=s.ref.cmdline,
        apt_source=s.ref.apt_source,
        suite=s.ref.suite,
        label=s.ref.label,
        job_disk=disk,
        job_kernel=s.for_job(opts, s.ref.kernel),
        job_initrd=s.for_job(opts, s.ref.initrd),
    )


def write_dag(
    run_dir: Path, runs: list[Run], staged: dict[str, StagedImage], opts: SubmitOptions
) -> Path:
    """Write the DAG, its submit descriptions, the plan and the job wrapper into RUNDIR/condor."""
    htcondor = bindings()
    from htcondor2 import dags

    run_dir = run_dir.resolve()
    if any(c.isspace() for c in str(run_dir)):
        raise UsageError(
            f"the run folder's path has white space, which DAG files cannot carry: {run_dir}",
            hint="choose another --out",
        )
    cdir = run_dir / CONDOR_DIR
    (cdir / "logs").mkdir(parents=True, exist_ok=True)
    plan = Plan(
        style=opts.style,
        delivery=opts.delivery,
        boot=opts.boot if opts.style == "qemu" else "disk",  # VM universe: no kernel argument
        held_max_s=opts.held_max_s,
        queue_max_s=opts.queue_max_s,
        images={platform: _plan_image(s, opts) for platform, s in staged.items()},
        package_proxy=opts.package_proxy,
        hosts_file=str(opts.hosts_file or "") if opts.deny else "",
        deny_policy=opts.deny_policy or "",
    )
    write_plan(run_dir, plan)
    if opts.style == "qemu":
        wrapper = cdir / "run-one.sh"
        wrapper.write_text(
            RUN_ONE_SH.format(
                path=SYSTEM_PATH,
                python=shlex.quote(opts.job_python),
                outcome_format=OUTCOME.version,
            )
        )
        wrapper.chmod(0o755)

    rd = str(run_dir)
    dag = dags.DAG()
    prep = dag.layer(
        name="prep",
        submit_description=htcondor.Submit(
            _node_description(
                run_dir, opts, f"prep {rd} $(vmh_run)", f"{cdir}/logs/prep-$(vmh_run)"
            )
        ),
        vars=[{"vmh_run": r.id} for r in runs],
        retries=opts.prep_retries,
        category="prep",
    )
    prep.child_layer(
        name="vm",
        edge=dags.OneToOne(),
        submit_description=htcondor.Submit(vm_description(run_dir, opts)),
        vars=[_vm_vars(r, staged[r.platform.name], opts) for r in runs],
        retries=opts.retries,
        retry_unless_exit=POST_FAILED,
        pre=dags.Script(
            opts.node_python, arguments=["-m", "vmharness.cli", "dag-node", "pre", rd, "$JOB"]
        ),
        post=dags.Script(
            opts.node_python,
            arguments=[
                "-m",
                "vmharness.cli",
                "dag-node",
                "post",
                rd,
                "$JOB",
                "$RETRY",
                "$MAX_RETRIES",
                "$JOBID",
            ],
        ),
    )
    final = htcondor.Submit(_node_description(run_dir, opts, f"final {rd}", f"{cdir}/report"))
    dag.final(name="report", submit_description=final)
    dag_file = dags.write_dag(
        dag, cdir, dag_file_name=DAG_FILE, node_name_formatter=_node_names([r.id for r in runs])
    )
    (cdir / "report.sub").write_text(str(final))  # the writer only writes layers' files
    # DAG(max_jobs_by_category=...) of the 25.x bindings writes "CATEGORY prep N", which DAGMan
    # rejects; the throttle's own syntax is MAXJOBS.
    with dag_file.open("a") as f:
        f.write(f"MAXJOBS prep {opts.prep_maxjobs}\n")
    if opts.deny:
        # Read by DAGMan at every VM node's submission; the POST scripts rewrite it.
        known = deny.deny_list(plan)
        deny.write_deny_sub(run_dir, known.denied() if known else [])
        vm_sub = cdir / "vm.sub"
        vm_sub.write_text(f"include : {cdir / deny.DENY_SUB}\n" + vm_sub.read_text())
    return dag_file


def give_to(owner: str, run_dir: Path, store: Path) -> None:
    """Make the run folder the pool account's: its jobs, DAGMan and POST scripts write there.
    Files in the image store stay as they are (they may be hard links into the image cache)."""
    pw = pwd.getpwnam(owner)
    _check_reachable(run_dir, pw)
    store = store.resolve()
    for root, _dirs, files in os.walk(run_dir):
        os.chown(root, pw.pw_uid, pw.pw_gid)
        if Path(root).resolve() == store:
            continue
        for name in files:
            os.chown(os.path.join(root, name), pw.pw_uid, pw.pw_gid, follow_symlinks=False)


def _hosts_file_for(owner: str, path: Path) -> None:
    """The deny-list's folder must be the pool account's to write: its POST scripts keep it."""
    pw = pwd.getpwnam(owner)
    folder = path.parent
    if not folder.exists():
        folder.mkdir(parents=True)
        os.chown(folder, pw.pw_uid, pw.pw_gid)
    _check_reachable(path, pw)
    st = folder.stat()
    if st.st_uid != pw.pw_uid and not st.st_mode & 0o002:
        raise UsageError(
            f"the pool's account {owner} cannot write the execute-host deny-list's folder "
            f"{folder} (its POST scripts keep the list there)",
            hint=f"give --hosts-file (or {hosts.HOSTS_FILE_ENV}) a file in a folder {owner} "
            "may write, or that does not exist yet (e.g. under /tmp: it is made for "
            f"{owner}), or submit with --no-deny-list",
        )
    for name in (path.name, path.name + ".lock"):
        with contextlib.suppress(FileNotFoundError):
            os.chown(folder / name, pw.pw_uid, pw.pw_gid)


def _check_reachable(path: Path, pw: pwd.struct_passwd) -> None:
    for parent in path.resolve().parents:
        st = parent.stat()
        if st.st_mode & 0o001 or st.st_uid == pw.pw_uid:
            continue
        if st.st_mode & 0o010 and st.st_gid == pw.pw_gid:
            continue
        raise UsageError(
            f"the pool's account {pw.pw_name} cannot enter {parent} (mode "
            f"{st.st_mode & 0o777:o}), so it cannot reach {path}",
            hint="choose an --out under a folder everyone may enter, e.g. /tmp",
        )


def submit_dag(schedd, dag_file: Path, *, rescue: bool = False) -> int:
    """Submit DAGMan for dag_file; with rescue, DAGMan runs what its rescue DAG left to do."""
    htcondor = bindings()
    options: dict[str, Any] = {"AllowVersionMismatch": True}
    if not rescue:
        options["force"] = True  # a fresh DAG: overwrite, and never pick up an old rescue file
    if os.environ.get(POOL_ENV_DAGMAN):
        options["DagmanPath"] = os.environ[POOL_ENV_DAGMAN]
    cwd = os.getcwd()
    os.chdir(dag_file.parent)  # the DAG's files are named relative to its folder
    try:
        description = htcondor.Submit.from_dag(str(dag_file), options)
    finally:
        os.chdir(cwd)
    description["initialdir"] = str(dag_file.parent)
    description["My.VmharnessRunDir"] = json.dumps(str(dag_file.parent.parent))
    try:
        return schedd.submit(description).cluster()
    except Exception as exc:  # noqa: BLE001
        raise InfraError(
            f"the schedd refused the DAG: {exc}", hint="condor_q -analyze, and the schedd's log"
        ) from None


def submit(
    folder,
    runs: list[Run],
    images: dict[str, ImageRef],
    opts: SubmitOptions,
    schedd,
    content_names: dict[Path, str] | None = None,
) -> Submitted:
    """Stage the images, write the DAG, hand the folder to the pool's account, submit."""
    t0 = time.monotonic()
    notes = []
    if opts.owner and opts.deny and opts.hosts_file:
        try:
            _hosts_file_for(opts.owner, opts.hosts_file)
        except UsageError as exc:
            if opts.hosts_file_given:
                raise
            # The default list (in root's cache) is out of the pool account's reach: run
            # without one rather than not at all, and say so.
            opts = replace(opts, deny=False)
            notes.append(f"{exc}; this DAG neither counts failures against hosts nor avoids any")
    run_dir = folder.path.resolve()
    store = (opts.image_store or run_dir / IMAGE_STORE).resolve()
    staged = stage_images(images, store, content_names)
    t1 = time.monotonic()
    dag_file = write_dag(run_dir, runs, staged, opts)
    folder.db.set_meta(
        condor={
            "style": opts.style,
            "delivery": opts.delivery,
            "image_store": str(store),
            "pool": opts.pool or "local",
            "hosts_file": str(opts.hosts_file or "") if opts.deny else "",
        }
    )
    if opts.owner:
        give_to(opts.owner, run_dir, store)
    t2 = time.monotonic()
    cluster = submit_dag(schedd, dag_file)
    folder.db.set_meta(condor_cluster=cluster)
    t3 = time.monotonic()
    return Submitted(
        run_dir=run_dir,
        dag_file=dag_file,
        cluster=cluster,
        runs=len(runs),
        seconds={"images": t1 - t0, "dag": t2 - t1, "submit": t3 - t2},
        notes=notes,
    )


def resubmit(folder, schedd) -> int:
    """Run again, on the pool, the runs a finished DAG left died or unfinished: DAGMan's rescue
    DAG (nodes that succeeded are skipped; the VM node's PRE script makes fresh disks)."""
    dag_file = folder.path.resolve() / CONDOR_DIR / DAG_FILE
    if not dag_file.is_file():
        raise UsageError(f"{folder.path} was not submitted to a pool (no {dag_file.name})")
    if not status.status(folder).finished:
        raise UsageError("its DAG is still in the queue", hint=f"vmharness status {folder.path}")
    if not list(dag_file.parent.glob(f"{DAG_FILE}.rescue[0-9][0-9][0-9]")):
        raise UsageError("nothing to run again: every node of its DAG succeeded")
    with contextlib.suppress(OSError, ValueError):  # a folder of an older vmharness: no list
        deny.reset(folder.path.resolve(), job.read_plan(folder.path.resolve()))
    cluster = submit_dag(schedd, dag_file, rescue=True)
    folder.db.set_meta(condor_cluster=cluster)
    return cluster


def remove(folder, schedd=None, reason: str = "removed by vmharness") -> None:
    """Remove the DAG (DAGMan removes its node jobs) and anything else of this run folder."""
    htcondor = bindings()
    schedd = schedd or htcondor.Schedd()
    schedd.act(
        htcondor.JobAction.Remove,
        f"VmharnessRunDir == {json.dumps(str(folder.path.resolve()))}",
        reason=reason,
    )
