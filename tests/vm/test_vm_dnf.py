"""dnf for real: a Debian guest with Debian's dnf, rpm and createrepo-c installs RPM packages
this test builds (rpmbuild, on the host) and serves from RPM repositories (createrepo_c) on
127.0.0.1; the guests reach them at 10.0.2.2. No Enterprise Linux image or mirror can be
reached from here: this proves the agent's dnf layer with real dnf, rpm and repositories.

One matrix of four runs (two spec files of a folder), in one image shared by the module:
- install from a repository: passes, and the package is in the after-list from the RPM
  database (not in the before-list);
- install, then upgrade to a second repository with a newer version: passes, version 2 after;
- install, then upgrade to a version whose %pre scriptlet exits 1: status `update`;
- a package that does not exist: status `install`.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli, vm_skip_reason

from vmharness.wire.guest import PROXY_FALLBACK_NOTE

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(
        not shutil.which("rpmbuild") or not shutil.which("createrepo_c"),
        reason="needs rpmbuild and createrepo_c (apt-get install rpm createrepo-c)",
    ),
]

# Unique to this session: the package cache outlives the test, and a repository of an earlier
# session on the same port had packages of the same names with other bytes.
RELEASE = f"1.t{time.time_ns()}"
RECIPE = """\
# debian-12 with Debian's dnf, rpm and createrepo-c: a guest that installs with dnf
distribution: debian
suite: bookworm
mirror: http://deb.debian.org/debian
components: [main]
kernel: linux-image-cloud-amd64
packages: [dnf, rpm, createrepo-c]
hostname: vmtest.localdomain
disk_size: 2G
certificate: generated
"""


def build_rpm(top: Path, version: str, *, failing_pre: bool = False) -> Path:
    """A tiny noarch RPM, vmharness-hello VERSION, whose program says its version; with
    FAILING_PRE its %pre scriptlet exits 1 (an upgrade to it fails)."""
    pre = "%pre\necho 'vmharness-hello: refusing this upgrade' >&2\nexit 1\n" if failing_pre else ""
    spec = top / "SPECS" / f"vmharness-hello-{version}.spec"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(
        textwrap.dedent(f"""\
        Name: vmharness-hello
        Version: {version}
        Release: {RELEASE}
        Summary: says hello with its version
        License: MIT
        BuildArch: noarch
        %description
        A package of the vmharness tests.
        %install
        mkdir -p %{{buildroot}}/usr/bin
        printf '#!/bin/sh\\necho hello {version}\\n' > %{{buildroot}}/usr/bin/vmharness-hello
        chmod 755 %{{buildroot}}/usr/bin/vmharness-hello
        """)
        + pre
        + "%files\n/usr/bin/vmharness-hello\n"
    )
    subprocess.run(
        ["rpmbuild", "--define", f"_topdir {top}", "-bb", str(spec)],
        check=True,
        capture_output=True,
    )
    return top / "RPMS" / "noarch" / f"vmharness-hello-{version}-{RELEASE}.noarch.rpm"


def build_shim(top: Path) -> Path:
    """What the RPM database of a Debian guest lacks (dpkg has it): /bin/sh, which every
    package with a scriptlet requires. Installed by dnf as a dependency of the first."""
    spec = top / "SPECS" / "vmharness-debian-shim.spec"
    spec.write_text(
        f"Name: vmharness-debian-shim\nVersion: 1\nRelease: {RELEASE}\n"
        "Summary: /bin/sh, from dpkg\n"
        "License: MIT\nBuildArch: noarch\nProvides: /bin/sh\n%description\nA shim.\n%files\n"
    )
    subprocess.run(
        ["rpmbuild", "--define", f"_topdir {top}", "-bb", str(spec)],
        check=True,
        capture_output=True,
    )
    return top / "RPMS" / "noarch" / f"vmharness-debian-shim-1-{RELEASE}.noarch.rpm"


def publish(folder: Path, *rpms: Path) -> None:
    folder.mkdir(parents=True)
    for rpm in rpms:
        shutil.copy(rpm, folder / rpm.name)
    subprocess.run(["createrepo_c", "--quiet", str(folder)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def rpm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, list[str]]]:
    """Three RPM repositories on 127.0.0.1: v1 (1.0), v2 (2.0), bad (3.0, failing %pre)."""
    tmp = tmp_path_factory.mktemp("rpms")
    served = tmp / "served"
    top = tmp / "rpmbuild"
    publish(served / "v1", build_rpm(top, "1.0"), build_shim(top))
    publish(served / "v2", build_rpm(top, "2.0"))
    publish(served / "bad", build_rpm(top, "3.0", failing_pre=True))
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            requests.append(self.path)

    handler = functools.partial(Handler, directory=str(served))
    # Below 32768: the package cache (apt-cacher-ng) fetches from no higher port.
    for port in range(22000 + os.getpid() % 1000, 32000):
        try:
            httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
            break
        except OSError:
            continue
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1], requests
    httpd.shutdown()


@pytest.fixture(scope="module")
def dnf_recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The recipe file, its image built once (into the ordinary, shared image cache)."""
    reason = vm_skip_reason()
    if reason:
        pytest.skip(reason)
    from vmharness.images.cache import ImageCache
    from vmharness.images.recipe import load_recipe

    path = tmp_path_factory.mktemp("recipe") / "debian-12-dnf.yaml"
    path.write_text(RECIPE)
    t0 = time.monotonic()
    image = ImageCache().get(load_recipe(str(path)), progress=lambda m: print(f"[image] {m}"))
    print(f"dnf image {image.folder} ready in {time.monotonic() - t0:.1f}s")
    return path


def test_dnf_installs_upgrades_and_fails_as_apt_does(
    tmp_path: Path,
    dnf_recipe: Path,
    rpm_server: tuple[int, list[str]],
    no_vm_left_behind: None,
) -> None:
    port, requests = rpm_server
    spec = tmp_path / "spec"
    spec.mkdir()
    common = f"""\
platforms: [{{name: debian-12-dnf, recipe: {dnf_recipe}}}]
repositories:
  v1: {{baseurl: "http://10.0.2.2:{port}/v1/", gpgcheck: false}}
  v2: {{baseurl: "http://10.0.2.2:{port}/v2/", gpgcheck: false}}
  bad: {{baseurl: "http://10.0.2.2:{port}/bad/", gpgcheck: false}}
"""
    (spec / "a.yaml").write_text(
        common
        + """\
sources:
  - {label: rpm v1, repos: [v1]}
  - {label: rpm v1 -> v2, repos: [v1], upgrade_to: [v2]}
  - {label: rpm v1 -> bad, repos: [v1], upgrade_to: [bad]}
package_sets:
  - {label: hello, packages: [vmharness-hello], selinux: false}
test:
  command: vmharness-hello && rpm -q vmharness-hello
  timeout: 2m
  format: exit-code
vm:
  memory: 768M
  network: user
  wall_timeout: 15m
  package_manager: dnf
"""
    )
    (spec / "b.yaml").write_text(
        common
        + """\
sources:
  - {label: rpm v1, repos: [v1]}
package_sets:
  - {label: missing, packages: [vmharness-no-such-package]}
"""
    )
    out = tmp_path / "run"
    proc = run_cli(
        "run",
        spec,
        "--out",
        out,
        "--jobs",
        "2",
        "--retries",
        "0",
        "--json",
        tmp_path / "r.json",
        timeout=2400,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the two failures below
    runs = {
        (r["source"], r["package_set"]): r
        for r in json.loads((tmp_path / "r.json").read_text())["runs"]
    }

    def output(key: tuple[str, str]) -> Path:
        return out / runs[key]["log_dir"] / "output"

    plain = ("rpm v1", "hello")
    assert runs[plain]["status"] == "pass", runs[plain]
    assert "hello 1.0" in (output(plain) / "test.log").read_text()
    assert (
        f"vmharness-hello\t1.0-{RELEASE}\tinstalled"
        in (output(plain) / "packages-after.txt").read_text()
    )
    assert "vmharness-hello" not in (output(plain) / "packages-before.txt").read_text()
    log = (output(plain) / "agent.log").read_text()
    assert "package manager: dnf" in log
    assert "selinux: not in this guest, permissive ignored" in log
    assert "dnf install exited 0" in log

    upgraded = ("rpm v1 -> v2", "hello")
    assert runs[upgraded]["status"] == "pass", runs[upgraded]
    assert "hello 2.0" in (output(upgraded) / "test.log").read_text()
    after_install = (output(upgraded) / "packages-after-install.txt").read_text()
    assert f"vmharness-hello\t1.0-{RELEASE}\tinstalled" in after_install
    assert (
        f"vmharness-hello\t2.0-{RELEASE}\tinstalled"
        in (output(upgraded) / "packages-after.txt").read_text()
    )

    bad = ("rpm v1 -> bad", "hello")
    assert runs[bad]["status"] == "update", runs[bad]
    assert "refusing this upgrade" in (output(bad) / "update.log").read_text()

    missing = ("rpm v1", "missing")
    assert runs[missing]["status"] == "install", runs[missing]
    assert "install failed" in runs[missing]["reason"]
    assert "vmharness-no-such-package" in (output(missing) / "install.log").read_text()

    if shutil.which("apt-cacher-ng"):
        # dnf went through vmharness's package cache: three runs installed 1.0, the repository
        # served it once.
        assert "package proxy: http://10.0.2.2:" in log and PROXY_FALLBACK_NOTE not in log
        served = [r for r in requests if r.endswith(f"vmharness-hello-1.0-{RELEASE}.noarch.rpm")]
        assert len(served) == 1, requests
    # The repositories were really read by dnf: their metadata and the packages it installed.
    assert any(r.endswith("/repodata/repomd.xml") for r in requests), requests
    assert any(r.endswith(f"vmharness-hello-2.0-{RELEASE}.noarch.rpm") for r in requests), requests
