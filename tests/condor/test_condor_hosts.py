"""Many execute points, and bad ones found and avoided (the deny-list), on a real pool.

The pool here is scripts/condor-pool with `--nodes 3` and faults, on its own port and state
folder ($VMHARNESS_POOL_PORT + 7, <state folder>-nodes), so the session's pool is left alone;
it is started per fault set and taken down at the end. Runs are trivial (`true`, no network)
with --style qemu and direct kernel boot.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

htcondor = pytest.importorskip("htcondor2", reason="the htcondor PyPI bindings are not installed")

from poolrun import vmharness  # noqa: E402

from vmharness.hosts import DenyList  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
POOL = REPO / "scripts" / "condor-pool"
VMH = [sys.executable, "-m", "vmharness.cli"]
BASE_DIR = os.environ.get("VMHARNESS_POOL_DIR", "/var/lib/vmharness-pool")
BASE_PORT = int(os.environ.get("VMHARNESS_POOL_PORT", "9620"))
POOL_ENV = {"VMHARNESS_POOL_DIR": BASE_DIR + "-nodes", "VMHARNESS_POOL_PORT": str(BASE_PORT + 7)}
EP = "ep{}.vmharness-pool"


def matrix(n_sets: int) -> str:
    sets = "".join(f"  - label: s{i}\n    packages: []\n" for i in range(n_sets))
    return f"""\
platforms: [el8, el9]
platform_map:
  el8: debian-12
  el9: debian-12
sources:
  - label: image packages
    repos: [main]
package_sets:
{sets}test:
  command: "true"
  timeout: 1m
  format: exit-code
vm:
  memory: 512M
  network: none
  output_size: 8M
  wall_timeout: 4m
"""


def pool(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(POOL), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **POOL_ENV},
        check=False,
    )


@pytest.fixture(scope="module")
def debian_image():
    from vmharness.images.cache import ImageCache
    from vmharness.images.recipe import load_recipe

    return ImageCache().get(load_recipe("debian-12"), progress=print)


@pytest.fixture(scope="module")
def nodes_pool(debian_image) -> Iterator[object]:
    """Start (or restart) the 3-node pool with the faults asked for; down at the end."""
    if os.geteuid() != 0:
        pytest.skip("the local HTCondor pool needs root")
    saved = {k: os.environ.get(k) for k in ("CONDOR_CONFIG", *POOL_ENV)}

    def up(*faults: str) -> dict[str, str]:
        args = ["up", "--nodes", "3"] + [a for f in faults for a in ("--fault", f)]
        proc = pool(*args)
        if proc.returncode == 4:
            pytest.skip(f"no pool can be made here: {proc.stderr[-300:]}")
        assert proc.returncode == 0, proc.stderr
        env = dict(POOL_ENV)
        for line in pool("env").stdout.splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value
        os.environ.update(env)
        htcondor.reload_config()
        return env

    yield up
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    htcondor.reload_config()
    down = pool("down")
    assert down.returncode == 0, down.stderr


def attempts_by_host(rundir: Path) -> dict[str, list[str]]:
    """host -> statuses of every attempt of every run (run.json of each attempt folder)."""
    seen: dict[str, list[str]] = {}
    for run_json in (rundir / "runs").glob("*/run.json"):
        r = json.loads(run_json.read_text())
        seen.setdefault(r.get("host", ""), []).append(r["status"])
    return seen


@pytest.mark.condor
def test_a_broken_host_is_denied_and_avoided(nodes_pool) -> None:
    nodes_pool("ep2=qemu")
    work = Path("/tmp") / f"vmh-hosts-{os.getpid()}"
    work.mkdir(mode=0o755, exist_ok=True)
    hosts = work / "deny" / "hosts.json"
    spec = work / "twelve.yaml"
    spec.write_text(matrix(6))
    first = work / "first"
    proc = vmharness(
        "submit", spec, "--style", "qemu", "--out", first, "--hosts-file", hosts, "--wait"
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    results = json.loads((first / "results.json").read_text())
    assert [r["status"] for r in results["runs"]] == ["pass"] * 12
    by_host = attempts_by_host(first)
    print("attempts by host:", by_host)
    assert "pass" not in by_host.get(EP.format(2), [])
    deny = DenyList.read(hosts)
    assert deny.denied() == [EP.format(2)]
    entry = deny.data.hosts[EP.format(2)]
    assert len(entry.failures) >= 2 and "broken" in entry.failures[0].reason, entry
    assert "infrastructure failures by execute host" in proc.stdout.lower()
    assert EP.format(2) in proc.stdout
    page = (first / "report.html").read_text()
    assert EP.format(2) in page and "by execute host" in page
    # The next matrix starts by avoiding it: no job of it goes there.
    second = work / "second"
    spec2 = work / "four.yaml"
    spec2.write_text(matrix(2))
    proc = vmharness(
        "submit", spec2, "--style", "qemu", "--out", second, "--hosts-file", hosts, "--wait"
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert EP.format(2) in (second / "condor" / "deny.sub").read_text()
    hosts_seen = set(attempts_by_host(second))
    assert hosts_seen and EP.format(2) not in hosts_seen, hosts_seen
    log_text = "".join(p.read_text() for p in (second / "runs").glob("*/condor-job.log"))
    assert "sock=ep2>" not in log_text  # not even an attempt that ended otherwise


@pytest.mark.condor
def test_an_expired_entry_gets_a_trial_and_a_success_clears_it(nodes_pool) -> None:
    nodes_pool()  # every execute point healthy again (ep2 was mended)
    work = Path("/tmp") / f"vmh-hosts-expiry-{os.getpid()}"
    work.mkdir(mode=0o755, exist_ok=True)
    hosts = work / "deny" / "hosts.json"
    hosts.parent.mkdir()
    with DenyList.locked(hosts) as d:  # yesterday: denied, for a day that is over now
        d.record(
            EP.format(2), failed=True, run="0001", reason="qemu broke", now=time.time() - 90000
        )
        d.record(
            EP.format(2), failed=True, run="0002", reason="qemu broke", now=time.time() - 90000
        )
        assert d.data.hosts[EP.format(2)].state(time.time()) == "trial"
    os.chown(hosts.parent, *_pool_ids())
    spec = work / "six.yaml"
    spec.write_text(matrix(3))
    proc = vmharness(
        "submit", spec, "--style", "qemu", "--out", work / "rd", "--hosts-file", hosts, "--wait"
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "{}" in (work / "rd" / "condor" / "deny.sub").read_text()  # expired: not avoided
    by_host = attempts_by_host(work / "rd")
    assert "pass" in by_host.get(EP.format(2), []), by_host  # it had its trial, and passed
    assert EP.format(2) not in DenyList.read(hosts).data.hosts  # and is forgiven


@pytest.mark.condor
def test_every_host_bad_ends_the_runs_without_looping(nodes_pool) -> None:
    nodes_pool("ep1=qemu", "ep2=qemu", "ep3=qemu")
    work = Path("/tmp") / f"vmh-hosts-all-{os.getpid()}"
    work.mkdir(mode=0o755, exist_ok=True)
    spec = work / "six.yaml"
    spec.write_text(matrix(3))
    t0 = time.monotonic()
    proc = vmharness(
        "submit",
        spec,
        "--style",
        "qemu",
        "--out",
        work / "rd",
        "--hosts-file",
        work / "deny" / "hosts.json",
        "--wait",
        timeout=600,
    )
    took = time.monotonic() - t0
    assert proc.returncode == 3, proc.stdout[-3000:]  # no run could be done: infrastructure
    results = json.loads((work / "rd" / "results.json").read_text())
    assert [r["status"] for r in results["runs"]] == ["died"] * 6
    # each run says why; the ones after the last host was denied say it is every host
    assert all(r["reason"] for r in results["runs"])
    assert any("every execute point" in r["reason"] for r in results["runs"]), results["runs"]
    assert DenyList.read(work / "deny" / "hosts.json").denied() == [EP.format(i) for i in (1, 2, 3)]
    assert took < 300, f"{took:.0f} s"


def _pool_ids() -> tuple[int, int]:
    import pwd

    pw = pwd.getpwnam(os.environ.get("VMHARNESS_POOL_USER", "vmharness"))
    return pw.pw_uid, pw.pw_gid
