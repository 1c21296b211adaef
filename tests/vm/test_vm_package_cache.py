"""The package cache in real VMs, against an apt repository this test serves on 127.0.0.1
(the guests reach it at 10.0.2.2), whose access log counts what the mirror really served.

- The second of two runs installing the same package fetches no package file from the
  repository, and passes; a version published after that is installed by the next run; a
  package that does not exist is `install`, as without the cache.
- The proxy killed in the middle of a matrix: the runs after it still pass, and their agent
  log says they went to the repository directly.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import signal
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from aptrepo import make_deb, publish
from conftest import run_cli

from vmharness.wire.guest import PROXY_FALLBACK_NOTE

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(
        not shutil.which("dpkg-deb") or not shutil.which("apt-cacher-ng"),
        reason="needs dpkg-deb and apt-cacher-ng (make setup)",
    ),
]


PKG = "vmharness-cached"


class Repository:
    def __init__(self, root: Path, port: int, requests: list[str]):
        self.root, self.port, self.requests = root, port, requests

    def debs_served(self) -> list[str]:
        return [r for r in self.requests if r.endswith(".deb")]


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[Repository]:
    served = tmp_path / "served"
    served.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            requests.append(urllib.parse.unquote(self.path))  # the access log

    handler = functools.partial(Handler, directory=str(served))
    # A port below 32768: apt-cacher-ng 3.7 cannot fetch from higher ones (the guests then go
    # to the repository directly, which this test would count as a miss of the cache).
    for port in range(21000 + os.getpid() % 1000, 32000):
        try:
            httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
            break
        except OSError:
            continue
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield Repository(served, httpd.server_address[1], requests)
    httpd.shutdown()


def spec(tmp_path: Path, port: int, package_sets: dict[str, str], name: str) -> Path:
    sets = "".join(f"  - label: {k}\n    packages: [{v}]\n" for k, v in package_sets.items())
    path = tmp_path / name
    path.write_text(
        "platforms: [debian-12]\n"
        "sources:\n  - label: local\n    repos: [local]\n"
        f'repositories:\n  local: "deb [trusted=yes] http://10.0.2.2:{port}/repo/ ./"\n'
        f"package_sets:\n{sets}"
        "test:\n  command: vmharness-cached\n  timeout: 2m\n  format: exit-code\n"
        "vm:\n  memory: 512M\n  network: user\n  wall_timeout: 10m\n"
    )
    return path


def run(spec_file: Path, out: Path, *extra: str) -> tuple[int, dict[str, dict]]:
    proc = run_cli(
        "run",
        spec_file,
        "--out",
        out,
        "--retries",
        "0",
        "--json",
        out.with_suffix(".json"),
        *extra,
        timeout=1200,
    )
    assert "package cache:" in proc.stdout, proc.stdout  # vmharness's own proxy was used
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    return proc.returncode, {r["package_set"]: r for r in runs}


def test_a_second_run_fetches_no_package_and_a_newer_version_is_seen(
    base_image: object, tmp_path: Path, repository: Repository, no_vm_left_behind: None
) -> None:
    # Versions unique to this test: the proxy's cache outlives it, and a repository of an
    # earlier session on the same port would have had a 1.0 with other bytes.
    tag = f"+t{time.time_ns()}"
    publish(
        repository.root / "repo",
        make_deb(tmp_path, PKG, "1.0" + tag),
        suite="cached",
        stamp=time.time() - 60,
    )
    first = spec(tmp_path, repository.port, {"cached": "vmharness-cached"}, "first.yaml")

    code, runs = run(first, tmp_path / "run1")
    assert code == 0 and runs["cached"]["status"] == "pass", runs
    (deb,) = repository.debs_served()  # fetched once, through the proxy
    assert deb.endswith(f"/vmharness-cached_1.0{tag}_all.deb")
    log1 = (tmp_path / "run1" / runs["cached"]["log_dir"] / "output" / "agent.log").read_text()
    assert "package proxy: http://10.0.2.2:" in log1 and PROXY_FALLBACK_NOTE not in log1

    served = len(repository.requests)
    code, runs = run(first, tmp_path / "run2")
    assert code == 0 and runs["cached"]["status"] == "pass", runs
    assert not [r for r in repository.requests[served:] if r.endswith(".deb")]
    assert len(repository.debs_served()) == 1  # the second run's package came from the cache

    # Published after the image and the proxy cached the lists: the next run installs it.
    publish(
        repository.root / "repo",
        make_deb(tmp_path, PKG, "1.1" + tag),
        suite="cached",
        stamp=time.time(),
    )
    both = spec(
        tmp_path,
        repository.port,
        {"cached": "vmharness-cached", "missing": "vmharness-no-such-package"},
        "third.yaml",
    )
    code, runs = run(both, tmp_path / "run3")
    assert code == 1, runs  # the missing package
    assert runs["cached"]["status"] == "pass", runs
    out = tmp_path / "run3" / runs["cached"]["log_dir"] / "output"
    assert f"cached 1.1{tag}" in (out / "test.log").read_text()
    assert f"vmharness-cached\t1.1{tag}" in (out / "packages-after.txt").read_text()
    assert runs["missing"]["status"] == "install", runs
    assert "install failed" in runs["missing"]["reason"]


def test_the_proxy_killed_mid_matrix_the_runs_after_it_go_direct_and_pass(
    base_image: object, tmp_path: Path, repository: Repository, no_vm_left_behind: None
) -> None:
    from vmharness.images.cache import ImageCache
    from vmharness.vm.pkgproxy import PackageProxy

    tag = f"+t{time.time_ns()}"
    publish(
        repository.root / "repo",
        make_deb(tmp_path, PKG, "2.0" + tag),
        suite="cached",
        stamp=time.time() - 60,
    )
    spec_file = spec(
        tmp_path,
        repository.port,
        {"first": "vmharness-cached", "second": "vmharness-cached"},
        "matrix.yaml",
    )
    state = PackageProxy(ImageCache().root).folder / "run" / "state.json"
    out = tmp_path / "run"
    killed: list[int] = []

    def kill_after_the_first_run() -> None:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and not killed:
            if list(out.glob("runs/*/run.json")) and state.exists():
                pid = json.loads(state.read_text())["pid"]
                os.kill(pid, signal.SIGKILL)  # the proxy vmharness started for this matrix
                killed.append(pid)
            time.sleep(0.2)

    watcher = threading.Thread(target=kill_after_the_first_run, daemon=True)
    watcher.start()
    code, runs = run(spec_file, out, "--jobs", "1")
    watcher.join(timeout=5)
    assert killed, "the first run never finished"
    assert code == 0, runs
    assert {r["status"] for r in runs.values()} == {"pass"}
    logs = {k: (out / r["log_dir"] / "output" / "agent.log").read_text() for k, r in runs.items()}
    assert PROXY_FALLBACK_NOTE not in logs["first"]
    assert PROXY_FALLBACK_NOTE in logs["second"]
