"""Bring your own image, with real VMs: a Debian system vmharness did not build (made by the
test with mmdebstrap, EXTLINUX as its bootloader, no agent, no serial console: a stand-in for
a distribution's cloud image, tests/standin_image.py) is imported and the smoke spec passes on
it, booted every way vmharness boots: direct kernel boot with the image's own kernel, the
image's own bootloader under SeaBIOS (as HTCondor's VM universe does), and a warm-boot
snapshot. Then the images that cannot be used are refused, each with its message.

Everything here uses a private image cache, so the import really happens in every session
(three `vmharness run` at once: one imports on first use, the others wait for it). The
stand-in itself is made once and kept (conftest's `standin_image`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import EXAMPLES, cli_env, kill_pids, qemu_pids_under, vmharness_argv

pytestmark = pytest.mark.vm

RUN_TIMEOUT_S = 1800  # per vmharness invocation (an import, then a boot, under TCG)
BOOTS = ("kernel", "disk", "snapshot")


def file_state(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns


def cli(cache: Path, *args: str | Path, timeout: float = RUN_TIMEOUT_S, columns: int = 200):
    t0 = time.monotonic()
    proc = subprocess.run(
        vmharness_argv(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(VMHARNESS_CACHE=str(cache), COLUMNS=str(columns)),
    )
    took = time.monotonic() - t0
    print(f"$ vmharness {' '.join(map(str, args))} -> {proc.returncode} in {took:.0f}s")
    print(proc.stdout[-5000:], proc.stderr[-3000:])
    return proc


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("import-cache")
    ca = Path(os.environ.get("VMHARNESS_CACHE", Path.home() / ".cache" / "vmharness")) / "ca"
    if (ca / "ca.pem").is_file():  # the same test CA as the other tests: nothing to make
        shutil.copytree(ca, cache / "ca")
    return cache


@pytest.fixture(scope="module")
def smoke_runs(standin_image, private_cache, tmp_path_factory):
    """examples/smoke.yaml on the stand-in, three boot ways at once; the spec's
    `{image: FILE}` imports it on first use (one process imports, the others wait)."""
    base = tmp_path_factory.mktemp("import-smoke")
    pmap = base / "map.yaml"
    pmap.write_text(f"debian-12: {{image: {standin_image}}}\n")
    before = file_state(standin_image)
    t0 = time.monotonic()
    procs = {}
    for boot in BOOTS:
        out = base / boot
        log = base / f"{boot}.log"
        with open(log, "wb") as f:
            procs[boot] = subprocess.Popen(
                vmharness_argv(
                    "run",
                    EXAMPLES / "smoke.yaml",
                    "--platform-map",
                    pmap,
                    "--out",
                    out,
                    "--json",
                    out / "r.json",
                    "--boot",
                    boot,
                    "--retries",
                    "0",
                ),
                stdout=f,
                stderr=subprocess.STDOUT,
                env=cli_env(VMHARNESS_CACHE=str(private_cache)),
                start_new_session=True,
            )
    done = {}
    for boot, proc in procs.items():
        try:
            code = proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
        log = base / f"{boot}.log"
        print(f"--- {boot} (exit {code}) ---\n{log.read_text(errors='replace')[-4000:]}")
        done[boot] = (code, base / boot, log.read_text(errors="replace"))
    print(f"import + smoke, three boot ways at once: {time.monotonic() - t0:.0f}s")
    assert file_state(standin_image) == before, "the user's image file was modified"
    kill_pids(left := qemu_pids_under(base))
    assert not left, "qemu still running after vmharness ended"
    return done


def check_smoke(code: int, out: Path) -> dict:
    assert code == 0, f"exit {code}"
    (run,) = json.loads((out / "r.json").read_text())["runs"]
    assert run["status"] == "pass", run["reason"]
    assert run["tests"]["ok"] == 5 and run["tests"]["fail"] == 0
    log_dir = out / run["log_dir"]
    assert "ok 5 -" in (log_dir / "output" / "test.log").read_text()
    result = json.loads((log_dir / "output" / "result.json").read_text())
    assert result["hostname"] == "vmtest.localdomain"
    assert result["kernel"].endswith("-cloud-amd64")  # the image's own kernel, every way
    # The agent's lines reach the serial console: console=ttyS0 is on the command line
    # (ours for direct boot; added to the image's EXTLINUX configuration for its own boot).
    assert "vmharness-agent:" in (log_dir / "console.log").read_text(errors="replace")
    return run


def test_the_spec_imports_the_image_on_first_use_once(smoke_runs) -> None:
    logs = [log for _code, _out, log in smoke_runs.values()]
    assert all("imported from" in log for log in logs)
    # one process imported it, the others waited for it and took the same image
    folders = {
        line.split(":")[1].split()[0]
        for log in logs
        for line in log.splitlines()
        if line.startswith("image debian-12:")
    }
    assert len(folders) == 1, folders


def test_smoke_passes_with_the_images_own_kernel(smoke_runs) -> None:
    code, out, _log = smoke_runs["kernel"]
    run = check_smoke(code, out)
    command = (out / run["log_dir"] / "work" / "qemu-command.txt").read_text()
    assert " -kernel " in command and "root=UUID=" in command
    print(f"imported image, direct kernel boot: {run['duration_s']:.0f}s, {run['phases']}")


def test_smoke_passes_with_the_images_own_bootloader(smoke_runs) -> None:
    code, out, _log = smoke_runs["disk"]
    run = check_smoke(code, out)
    command = (out / run["log_dir"] / "work" / "qemu-command.txt").read_text()
    assert " -kernel " not in command and " -initrd " not in command
    assert run["boot"] == "boot from disk"
    print(f"imported image, its own bootloader: {run['duration_s']:.0f}s, {run['phases']}")


def test_smoke_passes_from_a_warm_boot_snapshot(smoke_runs) -> None:
    code, out, _log = smoke_runs["snapshot"]
    run = check_smoke(code, out)
    # made for this run from the image's own kernel, then restored with the run's disks
    assert run["boot"].startswith("restored from snapshot"), run["boot"]
    print(f"imported image, warm-boot snapshot: {run['duration_s']:.0f}s, {run['boot']}")


def test_image_import_finds_it_cached_and_image_list_shows_where_from(
    smoke_runs, standin_image, private_cache
) -> None:
    before = sorted((private_cache / "images").iterdir())
    proc = cli(private_cache, "image", "import", standin_image, "--name", "ignored-when-cached")
    assert proc.returncode == 0
    # an image imported before is looked up by content, not imported again
    assert sorted((private_cache / "images").iterdir()) == before
    assert "agent on /usr/bin/python3 (Python 3." in proc.stdout
    assert "root=UUID=" in proc.stdout
    listing = cli(private_cache, "image", "list", columns=600)  # each row on one line
    assert listing.returncode == 0
    assert f"imported from {standin_image} (debian 12" in listing.stdout
    (folder,) = (private_cache / "images").iterdir()
    meta = json.loads((folder / "image.json").read_text())
    assert meta["origin"].startswith(str(standin_image)) and "debian 12" in meta["distro"]
    assert any("console=ttyS0" in n and "extlinux.conf" in n for n in meta["notes"])
    assert any(n.startswith("machine-id: set") for n in meta["notes"])
    for name in ("disk.qcow2", "vmlinuz", "initrd.img"):
        assert not os.access(folder / name, os.W_OK) or os.geteuid() == 0
        assert (folder / name).stat().st_mode & 0o222 == 0, f"{name} must be read-only"
    print(f"import took {meta['import_seconds']}s (load {os.getloadavg()[0]:.1f})")


# -- images that cannot be used ----------------------------------------------------------------
def guestfish(*script: str) -> None:
    env = dict(os.environ, LIBGUESTFS_BACKEND="direct", LIBGUESTFS_BACKEND_SETTINGS="force_tcg")
    subprocess.run(["guestfish", *script], check=True, env=env, capture_output=True, timeout=900)


def test_an_image_without_systemd_python_blkid_is_refused_before_any_run(
    standin_image, private_cache, tmp_path
) -> None:
    broken = tmp_path / "no-python-no-systemd.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(standin_image)]
        + [str(broken)],
        check=True,
    )
    guestfish(
        "-a", str(broken), "-i",
        "glob", "rm-f", "/usr/bin/python3*", ":",
        "rm-f", "/usr/lib/systemd/systemd", ":",
        "rm-f", "/usr/sbin/blkid",
    )  # fmt: skip
    pmap = tmp_path / "map.yaml"
    pmap.write_text(f"debian-12: {{image: {broken}}}\n")
    out = tmp_path / "out"
    proc = cli(private_cache, "run", EXAMPLES / "smoke.yaml", "--platform-map", pmap, "--out", out)
    assert proc.returncode == 2, "bad input: exit 2"
    err = " ".join(proc.stderr.split())
    assert str(broken) in err and "cannot import this image" in err
    assert "no systemd" in err and "/usr/lib/systemd/systemd" in err
    assert "no Python 3.6 or newer for the agent" in err
    assert "no blkid" in err
    assert not qemu_pids_under(out) and not list(out.glob("runs/*/console.log")), "a run started"


def test_a_disk_without_a_root_filesystem_is_refused(private_cache, tmp_path) -> None:
    """A partition table, but nothing an operating system could be in."""
    empty = tmp_path / "no-root.img"
    with open(empty, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(
        ["sfdisk", "-q", str(empty)],
        input="label: dos\nstart=2048, type=83\n",
        text=True,
        check=True,
    )
    proc = cli(private_cache, "image", "import", empty)
    assert proc.returncode == 2
    err = " ".join(proc.stderr.split())
    assert str(empty) in err and "no root filesystem found" in err
