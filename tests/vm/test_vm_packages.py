"""Repositories, package installs and upgrades in real VMs, from an apt repository of our own.

The repository is served on 127.0.0.1 by this test; the guest reaches it through qemu's
user-mode NAT at 10.0.2.2, so nothing leaves the machine. Three runs in one matrix:
install (pass), install then upgrade to a second repository (pass, version 2 after), and a
package that does not exist (status `install`).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from aptrepo import make_deb, publish

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(os.geteuid() != 0, reason="image builds need root"),
    pytest.mark.skipif(
        not shutil.which("qemu-system-x86_64") or not shutil.which("dpkg-deb"),
        reason="qemu or dpkg-deb missing",
    ),
]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def apt_server(tmp_path: Path):
    served = tmp_path / "served"
    publish(served / "v1", make_deb(tmp_path, "vmharness-hello", "1.0"))
    publish(served / "v2", make_deb(tmp_path, "vmharness-hello", "2.0"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()


def test_install_upgrade_and_failed_install_from_a_local_repository(tmp_path, apt_server):
    port = apt_server
    spec = tmp_path / "packages.yaml"
    spec.write_text(f"""
platforms: [debian-12]
sources:
  - label: local v1
    repos: [v1]
  - label: local v1 -> v2
    repos: [v1]
    upgrade_to: [v2]
repositories:
  v1: "deb [trusted=yes] http://10.0.2.2:{port}/v1/ ./"
  v2: "deb [trusted=yes] http://10.0.2.2:{port}/v2/ ./"
package_sets:
  - label: hello
    packages: [vmharness-hello]
test:
  command: vmharness-hello && dpkg-query -W -f='${{Version}}\\n' vmharness-hello
  timeout: 2m
  format: exit-code
vm:
  memory: 512M
  network: user
  wall_timeout: 15m
""")
    bad = tmp_path / "missing.yaml"
    bad.write_text(
        spec.read_text()
        .replace("packages: [vmharness-hello]", "packages: [vmharness-no-such-package]")
        .replace("  - label: local v1 -> v2\n    repos: [v1]\n    upgrade_to: [v2]\n", "")
    )
    out = tmp_path / "run"
    env = dict(os.environ)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmharness.cli",
            "run",
            str(spec),
            "--out",
            str(out),
            "--jobs",
            "2",
            "--retries",
            "0",
            "--json",
            str(tmp_path / "r.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = {r["source"]: r for r in json.loads((tmp_path / "r.json").read_text())["runs"]}
    assert runs["local v1"]["status"] == "pass"
    assert runs["local v1 -> v2"]["status"] == "pass"
    v1_log = (out / runs["local v1"]["log_dir"] / "output" / "test.log").read_text()
    v2_log = (out / runs["local v1 -> v2"]["log_dir"] / "output" / "test.log").read_text()
    assert "hello 1.0" in v1_log and "hello 2.0" not in v1_log
    assert "hello 2.0" in v2_log
    upgraded = out / runs["local v1 -> v2"]["log_dir"] / "output"
    assert "vmharness-hello\t1.0" in (upgraded / "packages-after-install.txt").read_text()
    assert "vmharness-hello\t2.0" in (upgraded / "packages-after.txt").read_text()
    assert "vmharness-hello" not in (upgraded / "packages-before.txt").read_text()

    out2 = tmp_path / "run-missing"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmharness.cli",
            "run",
            str(bad),
            "--out",
            str(out2),
            "--retries",
            "0",
            "--json",
            str(tmp_path / "m.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=ROOT,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (run,) = json.loads((tmp_path / "m.json").read_text())["runs"]
    assert run["status"] == "install"
    assert "install failed" in run["reason"]
    assert (
        "vmharness-no-such-package"
        in (out2 / run["log_dir"] / "output" / "install.log").read_text()
    )
