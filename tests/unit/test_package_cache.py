"""The package cache's pure parts: the agent's proxy use and fallback (with a stand-in
apt-get), the conditions that carry the proxy, and the host's apt-cacher-ng (started for real
when it is installed: it starts in a fraction of a second)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import importlib.machinery
import importlib.util
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from pathlib import Path
from types import ModuleType

import pytest
from aptrepo import make_deb
from conftest import cli_env

from vmharness.engine.attempt import conditions_for
from vmharness.engine.local import package_cache_limit
from vmharness.errors import SpecError
from vmharness.spec import load_spec
from vmharness.spec.expand import expand
from vmharness.vm import pkgproxy
from vmharness.vm.pkgproxy import PackageProxy, ProxyUnavailable, config_text
from vmharness.wire.guest import GUEST_HOST_ADDRESS, PROXY_FALLBACK_NOTE

AGENT = Path(__file__).resolve().parents[2] / "src" / "vmharness" / "guest" / "vmharness-agent"

# A stand-in apt-get: fails as apt does when it cannot reach a server (the proxy, if one is
# configured, else the mirror when $MIRROR_DOWN is set), or when asked for $MISSING.
FAKE_APT = """#!/bin/sh
echo "apt-get $*" >> "$CALLS"
if [ -f "$PROXY_CONF" ] && [ -n "$PROXY_DOWN" ]; then
  echo "Err:1 http://deb.debian.org/debian bookworm InRelease"
  echo "  Could not connect to 10.0.2.2:3142 (10.0.2.2). - connect (111: Connection refused)"
  exit 100
fi
if [ -n "$MIRROR_DOWN" ]; then
  echo "W: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease"
  echo "  Temporary failure resolving 'deb.debian.org'"
  exit 100
fi
if [ -f "$PROXY_CONF" ] && [ -n "$PROXY_PARTIAL" ] && [ "${*#*update}" != "$*" ]; then
  echo "W: Failed to fetch http://127.0.0.1:33123/repo/./InRelease  503  Connection refused"
  echo "W: Some index files failed to download. They have been ignored, or old ones used instead."
  exit 0
fi
if [ -f "$PROXY_CONF" ] && [ -n "$PROXY_STALE" ]; then
  echo "E: Failed to fetch http://127.0.0.1:8080/repo/./x_1.0_all.deb  Hash Sum mismatch"
  exit 100
fi
for a in "$@"; do
  if [ "$a" = "$MISSING" ]; then echo "E: Unable to locate package $a"; exit 100; fi
done
exit 0
"""


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("vmharness_agent_cache", str(AGENT))
    spec = importlib.util.spec_from_loader("vmharness_agent_cache", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(module, "OUTPUT_DIR", str(out))
    monkeypatch.setattr(module, "PROXY_CONF", str(tmp_path / "proxy.conf"))
    monkeypatch.setattr(module, "SOURCES_LIST", str(tmp_path / "sources.list"))
    monkeypatch.setattr(module.time, "sleep", lambda _s: None)  # no back-off in tests
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "apt-get").write_text(FAKE_APT)
    (bindir / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    monkeypatch.setenv("CALLS", str(tmp_path / "calls"))
    monkeypatch.setenv("PROXY_CONF", str(tmp_path / "proxy.conf"))
    for var in ("PROXY_DOWN", "PROXY_STALE", "PROXY_PARTIAL", "MIRROR_DOWN", "MISSING"):
        monkeypatch.delenv(var, raising=False)
    return module


def listening_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_a_proxy_that_fails_mid_install_falls_back_to_the_mirror_and_says_so(
    agent: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = agent.Agent()
    with listening_port() as s:
        a.choose_proxy(f"http://127.0.0.1:{s.getsockname()[1]}")
    assert a.proxy and Path(agent.PROXY_CONF).is_file()
    monkeypatch.setenv("PROXY_DOWN", "1")
    a.install([], ["curl"])  # no exception: the run goes on without the proxy
    assert a.proxy is None and not Path(agent.PROXY_CONF).exists()
    log = (tmp_path / "out" / "install.log").read_text()
    assert "Could not connect" in log and log.count("apt-get update") == 2


def test_a_proxy_that_cannot_be_reached_is_not_used_and_the_log_says_so(
    agent: ModuleType, tmp_path: Path
) -> None:
    lines: list[str] = []
    a = agent.Agent()
    a.log = lines.append
    with listening_port() as s:
        port = s.getsockname()[1]
    a.choose_proxy(f"http://127.0.0.1:{port}")  # nothing listens there any more
    assert a.proxy is None and not Path(agent.PROXY_CONF).exists()
    assert any(PROXY_FALLBACK_NOTE in line for line in lines)


def test_a_missing_package_is_an_install_failure_through_the_proxy_too(
    agent: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = agent.Agent()
    with listening_port() as s:
        a.choose_proxy(f"http://127.0.0.1:{s.getsockname()[1]}")
    monkeypatch.setenv("MISSING", "no-such-package")
    with pytest.raises(agent.PhaseFailed) as failed:
        a.install([], ["no-such-package"])
    assert failed.value.counts_as is None  # reported as `install`
    assert a.proxy is not None  # the proxy was not blamed


def test_an_unreachable_mirror_is_reported_as_the_network_not_the_packages(
    agent: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIRROR_DOWN", "1")
    with pytest.raises(agent.PhaseFailed) as failed:
        agent.Agent().install([], ["curl"])
    assert failed.value.counts_as == "network"  # -> died, with apt's words as the reason
    assert "Temporary failure resolving" in str(failed.value)


def test_repositories_at_the_guests_host_address_are_the_host_loopback_for_the_host_proxy(
    agent: ModuleType, tmp_path: Path
) -> None:
    line = f"deb [trusted=yes] http://{GUEST_HOST_ADDRESS}:8080/v1/ ./"
    a = agent.Agent()
    with listening_port() as s:
        a.set_sources([line, "deb http://deb.debian.org/debian bookworm main"])
        assert line in Path(agent.SOURCES_LIST).read_text()
        a.use_proxy(f"http://{GUEST_HOST_ADDRESS}:{s.getsockname()[1]}")
    text = Path(agent.SOURCES_LIST).read_text()
    assert "http://127.0.0.1:8080/v1/ ./" in text and GUEST_HOST_ADDRESS not in text
    assert "deb.debian.org" in text
    a.use_proxy(None)  # fallback: the lines as given again
    assert line in Path(agent.SOURCES_LIST).read_text()
    a.use_proxy("http://proxy.example.org:3128")  # a site proxy cannot reach our loopback
    assert line in Path(agent.SOURCES_LIST).read_text()


def test_proxy_urls_are_split_as_apt_would(agent: ModuleType) -> None:
    assert agent.host_of("http://10.0.2.2:3142") == "10.0.2.2"
    assert agent.port_of("http://10.0.2.2:3142/") == 3142
    assert agent.host_of("http://user:pw@squid.site/") == "squid.site"
    assert agent.port_of("http://squid.site") == 80


SPEC = """
platforms: [debian-12]
sources:
  - label: image
    repos: [main]
package_sets:
  - label: none
    packages: []
  - label: curl
    packages: [curl]
test: {command: "true"}
vm: {network: user}
"""


def test_the_proxy_goes_only_into_the_conditions_of_runs_that_fetch_packages(
    tmp_path: Path,
) -> None:
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(SPEC)
    runs = {r.package_set.label: r for r in expand(load_spec(spec_file))}
    main = "deb http://deb.debian.org/debian bookworm main"
    for label, expected in (("curl", {"proxy": "http://10.0.2.2:3142"}), ("none", None)):
        cond = conditions_for(
            runs[label], main_source=main, suite="bookworm", package_proxy="http://10.0.2.2:3142"
        )
        assert tomllib.loads(cond.to_toml()).get("apt") == expected
    no_proxy = conditions_for(runs["curl"], main_source=main, suite="bookworm")
    assert "apt" not in tomllib.loads(no_proxy.to_toml())


def test_the_proxy_listens_on_loopback_only_and_always_revalidates_lists(tmp_path: Path) -> None:
    text = config_text(tmp_path, 3199)
    assert "BindAddress: 127.0.0.1\n" in text and "Port: 3199\n" in text
    assert "FreshIndexMaxAge: 0\n" in text
    assert f"CacheDir: {tmp_path / 'data'}\n" in text


def test_a_missing_apt_cacher_ng_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(ProxyUnavailable, match="apt-get install apt-cacher-ng"):
        PackageProxy(tmp_path, program="no-such-apt-cacher-ng").start()


@pytest.mark.skipif(not shutil.which("apt-cacher-ng"), reason="apt-cacher-ng not installed")
def test_one_proxy_is_shared_and_the_last_user_stops_it(tmp_path: Path) -> None:
    first, second = PackageProxy(tmp_path), PackageProxy(tmp_path)
    info = first.start()
    try:
        assert second.start() == info  # joined, not started twice
        with socket.create_connection(("127.0.0.1", info.port), timeout=2):
            pass
        assert info.guest_url == f"http://{GUEST_HOST_ADDRESS}:{info.port}"
        assert not first.release()  # the second still uses it
        assert Path(f"/proc/{info.pid}").exists()
    finally:
        first.release()
        stopped = second.release()
    assert stopped and not first._is_ours(info.pid)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", info.port), timeout=1)


def test_an_unchanged_release_file_keeps_its_time_and_a_changed_one_does_not(
    agent: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    lists = tmp_path / "lists"
    lists.mkdir()
    monkeypatch.setattr(agent, "LISTS_DIR", str(lists))
    (lists / "same_InRelease").write_bytes(b"same")
    (lists / "changed_InRelease").write_bytes(b"old!")
    for name in ("same_InRelease", "changed_InRelease"):
        os.utime(lists / name, (1_000_000, 1_000_000))
    before = agent.small_lists()
    (lists / "same_InRelease").write_bytes(b"same")  # fetched again: new time, same bytes
    (lists / "changed_InRelease").write_bytes(b"new!")  # published since: new bytes
    assert "1 unchanged" in agent.keep_list_times(before)
    assert (lists / "same_InRelease").stat().st_mtime == 1_000_000
    assert (lists / "changed_InRelease").stat().st_mtime != 1_000_000


def test_a_stale_package_in_the_proxy_is_fetched_directly_not_an_install_failure(
    agent: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = agent.Agent()
    with listening_port() as s:
        a.choose_proxy(f"http://127.0.0.1:{s.getsockname()[1]}")
    monkeypatch.setenv("PROXY_STALE", "1")  # the same file name republished with new bytes
    a.install([], ["x"])
    assert a.proxy is None
    assert "Hash Sum mismatch" in (tmp_path / "out" / "install.log").read_text()


def test_lists_the_proxy_could_not_fetch_are_fetched_directly(
    agent: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = agent.Agent()
    with listening_port() as s:
        a.choose_proxy(f"http://127.0.0.1:{s.getsockname()[1]}")
    monkeypatch.setenv("PROXY_PARTIAL", "1")  # apt-get update exits 0 with only a warning
    a.install([], ["x"])
    assert a.proxy is None
    assert (tmp_path / "calls").read_text().count(" update ") == 2  # proxy, then direct


def _cached(data: Path, name: str, size: int, used: float) -> Path:
    """A file as apt-cacher-ng keeps it (with its NAME.head), last used at USED."""
    path = data / "deb.debian.org" / "debian" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    Path(f"{path}.head").write_bytes(b"h" * 100)
    os.utime(path, (used, used))
    return path


def test_a_cache_over_its_limit_loses_the_files_used_least_recently(tmp_path: Path) -> None:
    proxy = PackageProxy(tmp_path)
    now = time.time()
    old = _cached(proxy.data, "pool/a_1_all.deb", 4000, now - 9 * 86400)
    superseded = _cached(proxy.data, "dists/bookworm/by-hash/SHA256/ab12", 4000, now - 10 * 86400)
    recent = _cached(proxy.data, "pool/c_1_all.deb", 4000, now - 86400)
    index = _cached(proxy.data, "dists/bookworm/InRelease", 4000, now - 3600)
    own = proxy.data / "_xstore" / "record"  # apt-cacher-ng's own: never touched, not counted
    own.parent.mkdir(parents=True)
    own.write_bytes(b"r" * 50_000)
    assert proxy.trim(20_000) == pkgproxy.Trimmed(size_before=16_400)  # under: nothing goes
    trimmed = proxy.trim(12_000)  # 16,400 bytes held; down to 80% of the limit: 9,600
    assert (trimmed.files, trimmed.removed) == (2, 8200)
    assert trimmed.size_after == 8200 <= 9600
    assert not superseded.exists() and not old.exists() and not Path(f"{old}.head").exists()
    assert recent.exists() and Path(f"{recent}.head").exists() and index.exists()
    assert own.exists()


def test_a_file_that_cannot_be_removed_is_passed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = PackageProxy(tmp_path)
    now = time.time()
    stuck = _cached(proxy.data, "pool/a_1_all.deb", 4000, now - 9 * 86400)
    gone = _cached(proxy.data, "pool/b_1_all.deb", 4000, now - 8 * 86400)
    real_unlink = os.unlink

    def unlink(path: str) -> None:
        if path == str(stuck):
            raise PermissionError(13, "Permission denied", path)
        real_unlink(path)

    monkeypatch.setattr(pkgproxy.os, "unlink", unlink)
    trimmed = proxy.trim(5000)  # 8,200 held: the stuck one stays, the next goes
    assert (trimmed.files, trimmed.removed) == (1, 4100)
    assert stuck.exists() and not gone.exists()


def test_the_cache_limit_is_the_option_else_the_environment_else_10g(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(pkgproxy.MAX_ENV, "lots")
    assert package_cache_limit("1G") == 1024**3  # the option wins, the variable is not read
    with pytest.raises(SpecError, match=r"\$VMHARNESS_PACKAGE_CACHE_MAX.*'lots'"):
        package_cache_limit(None)
    with pytest.raises(SpecError, match="--package-cache-max.*'huge'"):
        package_cache_limit("huge")
    monkeypatch.setenv(pkgproxy.MAX_ENV, "512M")
    assert package_cache_limit(None) == 512 * 1024**2
    monkeypatch.delenv(pkgproxy.MAX_ENV)
    assert package_cache_limit(None) == pkgproxy.DEFAULT_MAX_BYTES == 10 * 1024**3


def test_a_bad_cache_limit_stops_only_runs_that_use_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    from vmharness.engine import local
    from vmharness.images.cache import ImageCache

    monkeypatch.setenv(pkgproxy.MAX_ENV, "lots")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "platforms: [debian-12]\nsources: [{label: s, repos: [main]}]\n"
        "package_sets: [{label: c, packages: [curl]}]\n"
        "vm: {network: user}\ntest: {command: 'true'}\n"
    )
    runs = expand(load_spec(spec))
    cache, console = ImageCache(tmp_path / "cache"), Console(file=io.StringIO())
    with contextlib.ExitStack() as stack:
        assert local._package_proxy("none", None, runs, cache, console, stack) is None
        given = "http://10.0.2.2:3128"
        assert local._package_proxy(given, None, runs, cache, console, stack) == given
        with pytest.raises(SpecError, match="VMHARNESS_PACKAGE_CACHE_MAX"):
            local._package_proxy("auto", None, runs, cache, console, stack)


def test_run_refuses_a_bad_cache_limit_before_making_its_folder(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "platforms: [debian-12]\nsources: [{label: s, repos: [main]}]\n"
        "package_sets: [{label: c, packages: [curl]}]\n"
        "vm: {network: user}\ntest: {command: 'true'}\n"
    )
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "vmharness.cli", "run", str(spec), "--out", str(out)]
    proc = subprocess.run(
        [*argv, "--package-cache-max", "lots"], env=cli_env(), capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--package-cache-max" in proc.stderr and "'lots'" in proc.stderr
    assert not out.exists()  # nothing made: the same command, corrected, can run
    proc = subprocess.run(
        argv, env=cli_env(VMHARNESS_PACKAGE_CACHE_MAX="x"), capture_output=True, text=True
    )
    assert proc.returncode == 2 and "$VMHARNESS_PACKAGE_CACHE_MAX" in proc.stderr
    assert not out.exists()


@pytest.mark.skipif(not shutil.which("apt-cacher-ng"), reason="apt-cacher-ng not installed")
def test_a_trimmed_package_is_fetched_again_through_the_real_proxy(tmp_path: Path) -> None:
    www = tmp_path / "www"
    debs = [make_deb(tmp_path, name, "1.0") for name in ("one", "two", "three")]
    for deb in debs:
        (www / "repo").mkdir(parents=True, exist_ok=True)
        shutil.copy(deb, www / "repo" / deb.name)
    handler = functools.partial(QuietHandler, directory=str(www))
    # A port below 32768: apt-cacher-ng 3.7 cannot fetch from higher ones.
    httpd = None
    for port in range(24000 + os.getpid() % 1000, 32000):
        with contextlib.suppress(OSError):
            httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
            break
    assert httpd is not None
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}/repo/"
    try:
        proxy = PackageProxy(tmp_path / "cache")
        info = proxy.start()
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": info.host_url}))
        for deb in debs:
            with opener.open(base + deb.name, timeout=10) as response:
                assert response.read() == deb.read_bytes()
        proxy.release()
        cached = {p.name: p for p in proxy.data.rglob("*.deb")}
        assert sorted(cached) == sorted(d.name for d in debs)
        assert all(Path(f"{p}.head").is_file() for p in cached.values())  # as trim expects
        for age, deb in enumerate(reversed(debs)):  # "one" used longest ago
            os.utime(cached[deb.name], (time.time() - age * 86400,) * 2)
        held = sum(p.stat().st_size for p in proxy.data.rglob("*") if p.is_file())
        again = PackageProxy(tmp_path / "cache", max_bytes=held - 1)
        info = again.start()
        try:
            assert again.trimmed is not None and again.trimmed.files >= 1
            assert not cached["one_1.0_all.deb"].exists() and cached["three_1.0_all.deb"].exists()
            log_before = again.access_log.read_text()
            opener = urllib.request.build_opener(
                urllib.request.ProxyHandler({"http": info.host_url})
            )
            with opener.open(base + "one_1.0_all.deb", timeout=10) as response:
                assert response.read() == debs[0].read_bytes()
            deadline = time.monotonic() + 10  # the proxy logs a transfer once it is done
            fetched = ""
            while "|I|" not in fetched and time.monotonic() < deadline:
                time.sleep(0.1)
                fetched = again.access_log.read_text()[len(log_before) :]
            assert "|I|" in fetched and "one_1.0_all.deb" in fetched  # from the origin again
        finally:
            again.release()
    finally:
        httpd.shutdown()
        httpd.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass
