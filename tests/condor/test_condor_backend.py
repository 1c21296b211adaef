"""The HTCondor backend (`vmharness submit`, `status`, `run-one`, the DAG's nodes).

Two kinds of tests:
- unmarked: the DAG and submit descriptions as written, and the POST script's decisions, without
  a pool (they need only the htcondor2 bindings);
- `@pytest.mark.condor`: on the real single-machine pool of scripts/condor-pool, which the
  session fixture brings up (and down again, if it started it). Skipped when not root, when the
  pool cannot be made here (the script exits 4), or when qemu is missing. On it: a 2 x 2 matrix
  with --style qemu end to end, the job ads of --style vm (run by vmharness's own VM helper:
  tests/test_condor_vm.py), a held job, a removed job, a corrupted output disk, an unreachable
  schedd.

Run folders live under /tmp (the pool root shares it) and belong to the pool's account.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

htcondor = pytest.importorskip("htcondor2", reason="the htcondor PyPI bindings are not installed")

from poolrun import pool_work_folder, vmharness  # noqa: E402

from vmharness.condor import events, nodes, status  # noqa: E402
from vmharness.condor import job as jobfile  # noqa: E402
from vmharness.condor import submit as condor  # noqa: E402
from vmharness.engine.attempt import ImageRef  # noqa: E402
from vmharness.spec import expand, load_spec  # noqa: E402
from vmharness.vm.job import VMOutcome  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
VMH = [sys.executable, "-m", "vmharness.cli"]

TRIVIAL = """\
platforms: [el8, el9]
platform_map:
  el8: debian-12
  el9: debian-12
sources:
  - label: image packages
    repos: [main]
package_sets:
  - label: a
    packages: []
  - label: b
    packages: []
test:
  command: "true"
  timeout: 1m
  format: exit-code
vm:
  memory: 512M
  network: none
  output_size: 8M
  wall_timeout: 4m
"""


# -- without a pool ----------------------------------------------------------------------------
@pytest.fixture
def two_run_spec(tmp_path: Path):
    image = tmp_path / "img.qcow2"
    image.write_bytes(b"QFI\xfb" + b"\0" * 4096)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        TRIVIAL.replace("el8: debian-12", f"el8: {{image: {image}}}").replace(
            "el9: debian-12", f"el9: {{image: {image}}}"
        )
    )
    runs = expand(load_spec(spec))
    return tmp_path, runs, {r.platform.name: ImageRef.given(image) for r in runs}


@pytest.mark.parametrize("style", ["qemu", "vm"])
def test_dag_and_submit_descriptions(two_run_spec, style: str) -> None:
    tmp, runs, images = two_run_spec
    opts = condor.SubmitOptions(
        style=style,
        node_python="/py",
        job_python="/jpy",
        owner=None,
        accel="tcg",
        retries=2,
        prep_maxjobs=7,
    )
    staged = condor.stage_images(images, tmp / "run" / "images")
    assert len({s.name for s in staged.values()}) == 1  # one file, one content-addressed name
    name = next(iter(staged.values())).name
    assert name.startswith("img-") and name.endswith(".qcow2")
    dag_file = condor.write_dag(tmp / "run", runs, staged, opts)
    dag = dag_file.read_text()
    for run in runs:
        rid = run.id
        assert f"JOB prep-{rid} prep.sub" in dag
        assert f"CATEGORY prep-{rid} prep" in dag
        assert f"RETRY prep-{rid} 3" in dag
        assert f"JOB vm-{rid} vm.sub" in dag
        assert f"RETRY vm-{rid} 2 UNLESS-EXIT 2" in dag
        assert f"PARENT prep-{rid} CHILD vm-{rid}" in dag
        assert (
            f"SCRIPT POST vm-{rid} /py -m vmharness.cli dag-node post {tmp / 'run'} $JOB "
            "$RETRY $MAX_RETRIES $JOBID"
        ) in dag
        assert f"SCRIPT PRE vm-{rid} /py -m vmharness.cli dag-node pre {tmp / 'run'} $JOB" in dag
    assert "MAXJOBS prep 7" in dag
    assert "FINAL report report.sub" in dag
    sub = (dag_file.parent / "vm.sub").read_text()
    prep = (dag_file.parent / "prep.sub").read_text()
    assert "universe = local" in prep and "dag-node prep" in prep
    assert "dag-node final" in (dag_file.parent / "report.sub").read_text()
    assert "periodic_hold = " in sub and "periodic_release = " in sub
    assert "periodic_remove = " in sub and "NumJobStarts < 3" in sub
    if style == "vm":
        assert "universe = vm" in sub and "vm_type = kvm" in sub
        assert "vm_disk = $(vmh_vm_disk)" in sub and "transfer_output_files = output.img" in sub
        assert "vm_no_output_vm = false" in sub
        keys = {line.split(" = ", 1)[0] for line in sub.splitlines()}
        assert not keys & {"output", "error", "input"}
        assert f'vmh_vm_disk="{name}:vda:w:qcow2,input.img:vdb:r:raw,output.img:vdc:w:raw"' in dag
    else:
        assert "universe = vanilla" in sub and "run-one.sh" in sub
        assert "transfer_output_files = output.img,console.log,outcome.json" in sub
        assert "VMHARNESS_ACCEL=tcg" in sub
        wrapper = (dag_file.parent / "run-one.sh").read_text()
        assert "/jpy -m vmharness.cli run-one job.json" in wrapper
    plan = json.loads((dag_file.parent / "plan.json").read_text())
    assert plan["style"] == style and plan["images"]["el8"]["job_disk"] == name


def test_shared_delivery_names_absolute_paths_and_vm_style_refuses_it(two_run_spec) -> None:
    tmp, runs, images = two_run_spec
    opts = condor.SubmitOptions(style="qemu", delivery="shared", node_python="/py", owner=None)
    staged = condor.stage_images(images, tmp / "store")
    condor.write_dag(tmp / "run", runs, staged, opts)
    plan = json.loads((tmp / "run" / "condor" / "plan.json").read_text())
    assert plan["images"]["el8"]["job_disk"] == str(tmp / "store" / staged["el8"].name)
    assert "store" not in (tmp / "run" / "condor" / "runs.dag").read_text()  # nothing transferred
    with pytest.raises(Exception, match="must travel"):
        condor.SubmitOptions(style="vm", delivery="shared")
    with pytest.raises(Exception, match="image-url"):
        condor.SubmitOptions(style="qemu", delivery="url")


def test_url_delivery_transfers_from_the_url(two_run_spec) -> None:
    tmp, runs, images = two_run_spec
    opts = condor.SubmitOptions(
        style="vm", delivery="url", image_url="https://h/imgs", node_python="/py", owner=None
    )
    staged = condor.stage_images(images, tmp / "store")
    condor.write_dag(tmp / "run", runs, staged, opts)
    dag = (tmp / "run" / "condor" / "runs.dag").read_text()
    assert f"https://h/imgs/{staged['el8'].name}" in dag


def test_outcome_from_events() -> None:
    hist = events.JobHistory(
        job_id="7.0", started=100.0, ended=130.0, host="ep1", terminated=True, return_value=0
    )
    assert events.outcome_from(hist, None, "vm").ended == "poweroff"
    ran = VMOutcome(ended="timeout", seconds=3, accelerator="tcg", reason="slow", host="x")
    got = events.outcome_from(hist, ran, "qemu")
    # run-one's host is the slot's Machine (the pool's name); the event's alias only without it
    assert (got.ended, got.host) == ("timeout", "x")
    nameless = VMOutcome(ended="timeout", seconds=3, accelerator="tcg", reason="slow", host="")
    assert events.outcome_from(hist, nameless, "qemu").host == "ep1"
    missing = events.outcome_from(hist, None, "qemu")
    assert missing.ended == "error" and "outcome.json" in missing.reason

    held = events.JobHistory(
        job_id="8.0",
        aborted=True,
        abort_reason="The job attribute PeriodicRemove expression '...' evaluated to TRUE",
        holds=[("Transfer input files failure: No such file", 13, 2)],
    )
    plan = jobfile.Plan(
        style="qemu", delivery="transfer", boot="kernel", held_max_s=60, queue_max_s=3600
    )
    got = events.outcome_from(held, None, "qemu", plan)
    assert got.ended == "error"
    assert "held for longer than 60s" in got.reason and "No such file" in got.reason
    timed = events.JobHistory(
        job_id="9.0",
        aborted=True,
        abort_reason="PeriodicRemove",
        holds=[
            (
                "vmharness: VM still running after its wall-clock timeout of 60s",
                3,
                jobfile.TIMEOUT_HOLD_SUBCODE,
            )
        ],
    )
    assert events.outcome_from(timed, None, "vm").ended == "timeout"
    removed = events.JobHistory(job_id="10.0", aborted=True)
    assert "condor_rm" in events.outcome_from(removed, None, "qemu").reason
    never = events.outcome_from(events.JobHistory(), None, "qemu")
    assert never.ended == "error" and "no end" in never.reason


def test_read_outcome_is_defensive(tmp_path: Path) -> None:
    path = tmp_path / "outcome.json"
    for text in ["", "[]", '{"ended": "rm -rf"}', '{"seconds": 1}', "{" * 100]:
        path.write_text(text)
        assert jobfile.read_outcome(path) is None
    path.write_text(
        json.dumps(
            {
                "ended": "poweroff",
                "seconds": 2.5,
                "accelerator": "kvm",
                "host": "h" * 1000,
                "exit_code": "0",
            }
        )
    )
    got = jobfile.read_outcome(path)
    assert got is not None and got.ended == "poweroff" and got.exit_code is None
    assert len(got.host) == 200


def test_job_description_round_trip(tmp_path: Path) -> None:
    from vmharness.vm.job import VMJob

    job = VMJob(
        name="vmharness-0001",
        base_disk=Path("/cache/d.qcow2"),
        kernel=None,
        initrd=None,
        cmdline="",
        input_disk=tmp_path / "input.img",
        output_disk=tmp_path / "output.img",
        workdir=tmp_path,
        console_log=tmp_path / "c.log",
        memory_mib=512,
        cpus=2,
        network="user",
        wall_timeout_s=99,
    )
    desc = jobfile.describe_job(
        job,
        run_id="0001",
        attempt=2,
        base="d-1234.qcow2",
        kernel=None,
        initrd=None,
        phases={"disks": 0.01},
    )
    back = jobfile.job_in(desc, Path("/sandbox"))
    assert back.base_disk == Path("/sandbox/d-1234.qcow2")
    assert back.input_disk == Path("/sandbox/input.img") and back.kernel is None
    assert (back.memory_mib, back.cpus, back.network, back.wall_timeout_s) == (512, 2, "user", 99)
    shared = jobfile.job_in(replace(desc, base_disk="/shared/d.qcow2"), Path("/sandbox"))
    assert shared.base_disk == Path("/shared/d.qcow2")


def test_final_node_closes_runs_without_a_verdict(two_run_spec) -> None:
    from vmharness.results.model import RunResult
    from vmharness.rundir import RunFolder
    from vmharness.spec import load_spec

    tmp, runs, _images = two_run_spec
    folder = RunFolder.create(load_spec(tmp / "spec.yaml"), runs, tmp / "rd", backend="condor")
    folder.db.start_attempt("0001")
    folder.db.finish_attempt(RunResult(run_id="0001", status="pass", attempt=1), final=True)
    folder.db.start_attempt("0002")  # its VM job never came back
    assert nodes.close_unfinished(folder) == ["0002", "0003", "0004"]
    results = folder.db.results()
    assert results["0001"].status == "pass"
    assert {results[i].status for i in ("0002", "0003", "0004")} == {"died"}
    assert "POST" in results["0002"].reason and "prep node failed" in results["0003"].reason
    assert nodes.close_unfinished(folder) == []


def test_host_of() -> None:
    assert (
        events.host_of("<10.0.0.1:9618?addrs=10.0.0.1-9618&alias=ep7.example&noUDP>")
        == "ep7.example"
    )
    assert events.host_of("<10.0.0.1:9618>") == "10.0.0.1:9618"


# -- on the pool -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def debian_image(condor_pool):
    """The debian-12 base image in the ordinary cache (built once if missing, 1-2 min)."""
    if not shutil.which("qemu-system-x86_64") or not shutil.which("mmdebstrap"):
        pytest.skip("the pool tests boot VMs: qemu-system-x86 and mmdebstrap are needed")
    from vmharness.images.cache import ImageCache
    from vmharness.images.recipe import load_recipe

    return ImageCache().get(load_recipe("debian-12"), progress=lambda m: print(f"[image] {m}"))


@pytest.fixture
def work(condor_pool):
    yield from pool_work_folder("vmh-condor-test-")


def _keys(obj, prefix: str = "") -> set[str]:
    if isinstance(obj, dict):
        return {f"{prefix}{k}" for k in obj} | {
            key
            for k, v in obj.items()
            if k not in ("phases", "versions")
            for key in _keys(v, f"{prefix}{k}.")
        }
    return set()


@pytest.mark.condor
def test_qemu_style_matrix_end_to_end(condor_pool, debian_image, work: Path) -> None:
    spec = work / "trivial.yaml"
    spec.write_text(TRIVIAL)
    local_spec = work / "one.yaml"
    local_spec.write_text(
        TRIVIAL.replace("platforms: [el8, el9]", "platforms: [el8]").replace(
            "  - label: b\n    packages: []\n", ""
        )
    )
    rundir, local_dir = work / "pool-run", work / "local-run"
    # The same test on the local backend, at the same time: its results.json is the reference.
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1", TERM="dumb")
    local = subprocess.Popen(
        [*VMH, "run", str(local_spec), "--out", str(local_dir)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    t0 = time.monotonic()
    proc = vmharness(
        "submit", spec, "--style", "qemu", "--out", rundir, "--json", work / "submit.json", "--wait"
    )
    pool_s = time.monotonic() - t0
    local_out, _ = local.communicate(timeout=600)
    print(f"local run:\n{local_out[-3000:]}\npool: {pool_s:.1f}s for 4 runs")
    assert proc.returncode == 0, proc.stderr
    assert local.returncode == 0, local_out

    results = json.loads((rundir / "results.json").read_text())
    reference = json.loads((local_dir / "results.json").read_text())
    assert results["backend"] == "condor" and reference["backend"] == "local"
    assert [r["status"] for r in results["runs"]] == ["pass"] * 4, results["runs"]
    # Identical in form: the same keys everywhere (values of phases/versions are free-form).
    assert _keys({k: v for k, v in results.items() if k != "runs"}) == _keys(
        {k: v for k, v in reference.items() if k != "runs"}
    )
    for run in results["runs"]:
        assert _keys(run) == _keys(reference["runs"][0]), run
        assert run["accelerator"] in ("tcg", "kvm")
        assert run["versions"]["condor_job"]
        log_dir = rundir / run["log_dir"]
        for name in (
            "console.log",
            "run.json",
            "conditions.toml",
            "condor-job.log",
            "output/result.json",
        ):
            assert (log_dir / name).is_file(), name
        assert not (log_dir / "work" / "output.img").exists()  # read and dropped
    for report in ("report.html", "junit.xml"):
        assert (rundir / report).is_file()
    submitted = json.loads((work / "submit.json").read_text())
    assert submitted["condor"]["cluster"] > 0
    assert {
        "id",
        "platform",
        "source",
        "package_set",
        "status",
        "reason",
        "duration_s",
        "tests",
        "log_dir",
    } <= set(submitted["runs"][0])

    status = vmharness("status", rundir, "--json", work / "status.json")
    assert status.returncode == 0
    st = json.loads((work / "status.json").read_text())
    assert st["dag"]["state"] == "done" and st["dag"]["exit_code"] == 0
    assert st["jobs"]["vm"] == {"done": 4} and st["jobs"]["prep"] == {"done": 4}
    assert st["statuses"] == {"pass": 4} and not st["held"]
    assert "runs 4/4 done" in status.stdout
    report = vmharness("report", rundir)
    assert report.returncode == 0


@pytest.mark.condor
def test_vm_style_jobs_are_accepted_with_the_right_ads(
    condor_pool, debian_image, work: Path
) -> None:
    spec = work / "trivial.yaml"
    spec.write_text(TRIVIAL)
    rundir = work / "vm-run"
    proc = vmharness("submit", spec, "--style", "vm", "--out", rundir)
    assert proc.returncode == 0, proc.stderr
    schedd = htcondor.Schedd()
    constraint = f'VmharnessRunDir == "{rundir}" && JobUniverse == 13'
    deadline = time.monotonic() + 120
    while True:  # the VM jobs are submitted once their prep nodes made the disks
        ads = schedd.query(constraint)
        if len(ads) == 4 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(ads) == 4, vmharness("status", rundir).stdout
    content = debian_image.content_name
    for ad in ads:
        rid = ad["VmharnessRun"]
        assert ad["JobUniverse"] == 13
        assert ad["Cmd"] == f"vmharness-{rid}"  # a label
        assert ad["JobVMType"] == "kvm"
        assert ad["JobVMMemory"] == 512 and ad["JobVM_VCPUS"] == 1
        assert ad["JobVMNetworking"] is False
        assert (
            ad["VMPARAM_vm_Disk"]
            == f"{content}:vda:w:qcow2,input.img:vdb:r:raw,output.img:vdc:w:raw"
        )
        assert ad["VMPARAM_No_Output_VM"] is False
        # the base image never travels back; vmharness's VM helper also returns the console
        assert ad["TransferOutput"] == "output.img,console.log,outcome.json"
        assert "VmharnessVMGahp" in str(ad["Requirements"])
        inputs = ad["TransferInput"].split(",")
        assert {"input.img", "output.img", f"{rundir}/images/{content}"} == set(inputs)
        assert ad.get("In", "/dev/null") == ad.get("Out", "/dev/null") == "/dev/null"
        assert ad.get("Err", "/dev/null") == "/dev/null"
        requirements = str(ad["Requirements"])
        assert "HasVM" in requirements and "VM_Type" in requirements
        assert ad["RequestMemory"] > ad["JobVMMemory"]  # qemu's own overhead
        assert str(jobfile.TIMEOUT_HOLD_SUBCODE) in str(ad["PeriodicRemove"])
        assert "NumJobStarts < 3" in str(ad["PeriodicRelease"])
        assert str(ad["PeriodicHold"]).startswith("JobStatus == 2")
        assert ad["JobStatus"] in (1, 2)  # the pool's VM helper runs them (test_condor_vm.py)
        assert (rundir / "runs" / rid / "work" / "input.img").is_file()
    from vmharness.rundir import RunFolder

    condor.remove(RunFolder.open(rundir))
    # Running VM jobs leave once their starters stopped the VMs, and DAGMan runs the FINAL
    # node (the reports) after a removal: minutes on a loaded 2-core machine, not seconds.
    deadline = time.monotonic() + 300
    while left := schedd.query(
        f'VmharnessRunDir == "{rundir}"', projection=["ClusterId", "JobUniverse", "JobStatus"]
    ):
        assert time.monotonic() < deadline, f"the DAG's jobs did not leave the queue: {left}"
        time.sleep(2)


FAULTS_A = """\
platforms: [good]
platform_map:
  good: debian-12
  bad: {image: bad.qcow2}
sources:
  - label: image packages
    repos: [main]
package_sets:
  - label: pass
    packages: []
  - label: corrupt
    packages: []
  - label: sleep
    packages: []
test:
  command: |
    set -e
    case "$(grep '^package_set' /run/vmharness/input/conditions.toml)" in
      *corrupt*) dev=$(findmnt -n -o SOURCE /run/vmharness/output)
                 dd if=/dev/zero of="$dev" bs=512 count=1 conv=notrunc,fsync ;;
      *sleep*) sleep 900 ;;
    esac
  timeout: 20m
  format: exit-code
vm:
  memory: 512M
  network: none
  output_size: 8M
"""
FAULTS_B = """\
platforms: [bad]
sources:
  - label: image packages
    repos: [main]
package_sets:
  - label: held
    packages: []
"""


@pytest.mark.condor
def test_faults_held_removed_corrupted(
    condor_pool, debian_image, standin_image: Path, work: Path
) -> None:
    """One DAG: 0001 passes; 0002's guest overwrites its output disk's boot sector (POST marks it
    died; DAGMan retries it once); 0003 sleeps and is removed with condor_rm (died, not retried);
    0004's image (an imported one: the only other image staged apart) vanishes from the store
    after submit (held: transfer input failure; removed by --held-max; died with the hold
    reason). The DAG goes on and ends with the reports."""
    from vmharness.rundir import RunFolder

    specs = work / "faults"
    specs.mkdir()
    (specs / "a.yaml").write_text(FAULTS_A)
    (specs / "b.yaml").write_text(FAULTS_B)
    shutil.copyfile(standin_image, specs / "bad.qcow2")  # imported by submit on first use
    rundir = work / "faults-run"
    proc = vmharness(
        "submit", specs, "--style", "qemu", "--out", rundir, "--retries", "1", "--held-max", "1s"
    )
    assert proc.returncode == 0, proc.stderr
    bad = list((rundir / "images").glob("bad-*.qcow2"))
    assert len(bad) == 1
    bad[0].unlink()  # the image store lost it: the VM job's input transfer fails

    schedd = htcondor.Schedd()
    folder = RunFolder.open(rundir)
    deadline = time.monotonic() + 300
    held_seen = removed = False
    while not (held_seen and removed):
        assert time.monotonic() < deadline, vmharness("status", rundir).stdout
        st = status.status(folder)
        if not held_seen and st.held:
            assert [h.run for h in st.held] == ["0004"]
            assert "Transfer input files failure" in st.held[0].reason
            shown = vmharness("status", rundir)
            assert "held job" in shown.stdout and "0004" in shown.stdout
            assert "No such file" in shown.stdout.replace("\n", " ")
            held_seen = True
        if not removed and schedd.query(
            f'VmharnessRunDir == "{rundir}" && VmharnessRun == "0003" && JobStatus == 2',
            projection=["ClusterId"],
        ):
            time.sleep(5)  # let it boot a little
            schedd.act(
                htcondor.JobAction.Remove,
                f'VmharnessRunDir == "{rundir}" && VmharnessRun == "0003"',
            )
            removed = True
        time.sleep(1)

    st = status.wait(folder, timeout_s=600, say=print)
    assert st.dag_state == "done" and st.dag_exit == 0  # the FINAL node made it succeed
    results = folder.db.results()
    assert {k: r.status for k, r in results.items()} == {
        "0001": "pass",
        "0002": "died",
        "0003": "died",
        "0004": "died",
    }
    assert "output disk unreadable" in results["0002"].reason
    assert results["0002"].attempt == 2 and len(folder.db.attempts("0002")) == 2  # retried
    assert results["0003"].reason.startswith("HTCondor job ")
    assert ": removed (" in results["0003"].reason  # with condor_rm's reason, if one was given
    assert len(folder.db.attempts("0003")) == 1  # a removal is not retried
    assert "Transfer input files failure" in results["0004"].hold_reason
    assert "held for longer than 1s" in results["0004"].reason
    report = json.loads((rundir / "results.json").read_text())
    held = next(r for r in report["runs"] if r["id"] == "0004")
    assert "Transfer input files failure" in held["hold_reason"]
    assert "Transfer input files failure" in (rundir / "report.html").read_text()
    assert any(p.name.startswith("0002.attempt1-") for p in (rundir / "runs").iterdir())


@pytest.mark.condor
def test_resubmit_runs_what_died_again(condor_pool, debian_image, work: Path) -> None:
    """A run that died with no retries left; `vmharness resubmit` runs DAGMan's rescue DAG: the
    VM node's PRE script makes a fresh attempt, the passing run is not redone."""
    from vmharness.rundir import RunFolder

    spec = work / "spec.yaml"
    spec.write_text(
        FAULTS_A.replace("  - label: sleep\n    packages: []\n", "").replace(
            "  bad: {image: bad.qcow2}\n", ""
        )
    )
    rundir = work / "rescue-run"
    first = vmharness(
        "submit", spec, "--style", "qemu", "--retries", "0", "--out", rundir, "--wait"
    )
    assert first.returncode == 1, first.stderr  # one run died
    again = vmharness("resubmit", rundir, "--wait")
    assert again.returncode == 1, again.stderr
    folder = RunFolder.open(rundir)
    assert [a["status"] for a in folder.db.attempts("0002")] == ["died", "died"]
    assert len(folder.db.attempts("0001")) == 1 and folder.db.results()["0001"].status == "pass"
    assert (rundir / "condor" / "runs.dag.rescue002").is_file()  # it died again: still to do


@pytest.mark.condor
def test_unreachable_schedd_is_a_clear_infrastructure_error(condor_pool, work: Path) -> None:
    spec = work / "trivial.yaml"
    spec.write_text(TRIVIAL)
    proc = vmharness(
        "submit", spec, "--style", "qemu", "--pool", "127.0.0.1:1", "--out", work / "never"
    )
    assert proc.returncode == 3
    assert "cannot reach the pool at 127.0.0.1:1" in proc.stderr
    assert "what to do" in proc.stderr
    assert not (work / "never").exists()  # nothing was made before the pool answered
