"""The agent's dnf and yum layer, its pure parts run on the host (the real dnf runs in
tests/vm/test_vm_dnf.py), and the agent's minimum Python version (3.6, checked by vermin)."""

from __future__ import annotations

import ast
import configparser
import importlib.machinery
import importlib.util
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

AGENT = Path(__file__).resolve().parents[2] / "src" / "vmharness" / "guest" / "vmharness-agent"


@pytest.fixture(scope="module")
def agent() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("vmharness_agent_dnf", str(AGENT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)  # the `__main__` block does not run
    return module


def only(*programs: str):  # type: ignore[no-untyped-def]
    return lambda path: Path(path).name in programs


@pytest.mark.parametrize(
    ("forced", "rpm", "apt", "present", "expected"),
    [
        (None, False, False, ("apt-get",), "apt"),
        (None, False, False, ("dnf", "yum"), "dnf"),
        (None, False, False, ("yum",), "yum"),  # Enterprise Linux 7
        (None, False, False, (), None),
        # A Debian guest with dnf too: RPM repositories make it dnf, apt ones apt.
        (None, True, False, ("apt-get", "dnf"), "dnf"),
        (None, False, True, ("apt-get", "dnf"), "apt"),
        (None, True, True, ("apt-get", "dnf"), "apt"),
        ("auto", True, False, ("apt-get", "dnf"), "dnf"),
        # Forced by the conditions (vm.package_manager), when the guest has it.
        ("dnf", False, False, ("apt-get", "dnf"), "dnf"),
        ("yum", False, False, ("dnf", "yum"), "yum"),
        ("dnf", False, False, ("apt-get",), None),
    ],
)
def test_the_package_manager_is_what_the_run_asks_for_and_the_guest_has(
    agent: ModuleType,
    forced: str | None,
    rpm: bool,
    apt: bool,
    present: tuple[str, ...],
    expected: str | None,
) -> None:
    assert agent.package_manager(forced, rpm, apt, exists=only(*present)) == expected


def test_a_repo_file_is_dnfs_ini_with_the_sections_as_given(agent: ModuleType) -> None:
    sections = [
        {"id": "v1", "baseurl": "http://10.0.2.2:8080/el$releasever/$basearch/", "gpgcheck": "0"},
        {
            "id": "osg",
            "name": "OSG",
            "baseurl": "https://repo.osg-htc.org/osg/24-main/el$releasever/release/$basearch/",
            "gpgkey": "https://repo.osg-htc.org/osg/RPM-GPG-KEY-OSG-24-developer",
            "priority": "98",
            "enabled": "0",
        },
    ]
    text = agent.render_repo_file(sections)
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(text)
    assert ini.sections() == ["v1", "osg"]
    assert dict(ini["v1"]) == {
        "baseurl": "http://10.0.2.2:8080/el$releasever/$basearch/",  # dnf's variables kept
        "gpgcheck": "0",
        "name": "v1",
        "enabled": "1",
        "skip_if_unavailable": "0",  # a named repository must answer (Debian's dnf skips)
    }
    assert ini["osg"]["name"] == "OSG" and ini["osg"]["enabled"] == "0"
    assert "proxy" not in text


def test_the_package_proxy_goes_into_http_repositories_only(agent: ModuleType) -> None:
    sections = [
        {"id": "local", "baseurl": "http://10.0.2.2:8080/v1/", "gpgkey": "http://10.0.2.2:8080/k"},
        {"id": "tls", "baseurl": "https://repo.example.org/el9/"},
        {"id": "mirrors", "baseurl": "http://a.example/", "mirrorlist": "http://m.example/"},
    ]
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(agent.render_repo_file(sections, "http://10.0.2.2:3142"))
    # The host's own proxy finds the host's repositories on its loopback.
    assert ini["local"]["proxy"] == "http://10.0.2.2:3142"
    assert ini["local"]["baseurl"] == "http://127.0.0.1:8080/v1/"
    assert ini["local"]["gpgkey"] == "http://127.0.0.1:8080/k"
    assert "proxy" not in ini["tls"]  # a cache sees nothing inside TLS
    assert "proxy" not in ini["mirrors"]
    site = configparser.ConfigParser(interpolation=None)
    site.read_string(agent.render_repo_file(sections[:1], "http://proxy.site.example:3128"))
    assert site["local"]["proxy"] == "http://proxy.site.example:3128"
    assert site["local"]["baseurl"] == "http://10.0.2.2:8080/v1/"  # a site proxy: unchanged


def test_a_repo_file_refuses_a_section_id_that_would_break_it(agent: ModuleType) -> None:
    for bad in ("", "a]b", "two\nlines"):
        with pytest.raises(agent.PhaseFailed, match="bad repository id"):
            agent.render_repo_file([{"id": bad, "baseurl": "http://x/"}])


def test_dnf_and_yum_command_lines(agent: ModuleType) -> None:
    assert agent.dnf_command("dnf", ["install", "a"]) == [
        "dnf",
        "-y",
        "--setopt=install_weak_deps=False",
        "install",
        "a",
    ]
    # yum installs what it finds and exits 0 unless a missing name is an error.
    assert agent.dnf_command("yum", ["install", "a"])[:3] == [
        "yum",
        "-y",
        "--setopt=skip_missing_names_on_install=False",
    ]


def test_rpm_lists_have_aparts_three_columns_sorted(agent: ModuleType) -> None:
    output = (
        "zlib\t1.2.11-40.el9\tx86_64\n"
        "glibc\t2.34-100.el9\ti686\n"
        "vmharness-hello\t1.0-1\tnoarch\n"
        "gpg-pubkey\tabc-123\t(none)\n"
        "shim\t2:1.0-1\tx86_64\n"
        "broken line\n"
    )
    assert agent.rpm_package_lines(output, "x86_64") == [
        "glibc.i686\t2.34-100.el9\tinstalled\n",  # a foreign architecture is named
        "gpg-pubkey\tabc-123\tinstalled\n",
        "shim\t2:1.0-1\tinstalled\n",  # the epoch, as rpm writes it
        "vmharness-hello\t1.0-1\tinstalled\n",
        "zlib\t1.2.11-40.el9\tinstalled\n",
    ]


@pytest.mark.skipif(not shutil.which("rpm"), reason="needs rpm (apt-get install rpm)")
def test_the_rpm_query_format_is_rpms(agent: ModuleType, tmp_path: Path) -> None:
    """The query format the agent gives rpm is one rpm accepts (an empty database here)."""
    (tmp_path / "db").mkdir()
    proc = subprocess.run(
        ["rpm", "--dbpath", str(tmp_path / "db"), "-qa", "--qf", agent.RPM_QUERY],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert agent.rpm_package_lines(proc.stdout, "x86_64") == []


@pytest.mark.parametrize(
    ("text", "mode", "expected"),
    [
        ("# c\nSELINUX=enforcing\nSELINUXTYPE=targeted\n", "permissive", "SELINUX=permissive\n"),
        ("SELINUX=permissive\n", "enforcing", "SELINUX=enforcing\n"),
        ("SELINUXTYPE=targeted", "enforcing", "SELINUXTYPE=targeted\nSELINUX=enforcing\n"),
    ],
)
def test_selinux_config_says_the_mode_the_package_set_asks(
    agent: ModuleType, text: str, mode: str, expected: str
) -> None:
    new = agent.selinux_config(text, mode)
    assert expected in new
    assert new.count("SELINUX=") == 1
    assert "SELINUXTYPE=targeted" in new or "SELINUXTYPE" not in text


def test_a_disabled_selinux_stays_disabled(agent: ModuleType) -> None:
    text = "SELINUX=disabled\nSELINUXTYPE=targeted\n"
    assert agent.selinux_config(text, "enforcing") == text


def test_the_agent_runs_on_python_3_6() -> None:
    """The agent runs on the guest's own Python, as old as Enterprise Linux 8's platform-python
    (3.6): vermin finds the oldest version each thing it uses needs."""
    vermin = shutil.which("vermin") or str(Path(__import__("sys").executable).parent / "vermin")
    if not Path(vermin).exists():
        pytest.skip("vermin is missing (pip install vermin; it is in the test extras)")
    proc = subprocess.run(
        [vermin, "-t=3.6-", "--no-tips", "--violations", str(AGENT)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_agents_grammar_is_python_3_6s() -> None:
    """Python's own parser, told to take 3.6's grammar, also reads the agent (no walrus,
    no positional-only parameters, no parenthesised context managers...)."""
    ast.parse(AGENT.read_text(), filename=str(AGENT), feature_version=(3, 6))
    with pytest.raises(SyntaxError):
        ast.parse("if (x := 1):\n    pass\n", feature_version=(3, 6))


def test_the_python_check_can_fail(tmp_path: Path) -> None:
    vermin = shutil.which("vermin") or str(Path(__import__("sys").executable).parent / "vermin")
    if not Path(vermin).exists():
        pytest.skip("vermin is missing")
    newer = tmp_path / "agent"
    newer.write_text(
        AGENT.read_text() + "\nimport subprocess\nsubprocess.run(['true'], text=True)\n"
    )
    proc = subprocess.run(
        [vermin, "-t=3.6-", "--no-tips", "--violations", str(newer)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "3.7" in proc.stdout


FAKE_DNF = """#!/bin/sh
# A stand-in for dnf (the boundary this test fakes): fails as libcurl does when a repository
# file sends it through a proxy, succeeds otherwise. Logs its arguments.
echo "fake dnf $*" >> "$FAKE_DNF_LOG"
if grep -q '^proxy=' "$REPO_FILE"; then
  echo "Curl error (7): Couldn't connect to server for http://10.0.2.2:3142 [Failed to connect]"
  exit 1
fi
exit 0
"""


def test_dnf_through_a_proxy_that_fails_goes_direct_and_says_so(
    agent: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxy answered the agent's probe, then failed dnf: the agent rewrites the repository
    file without it, runs dnf again and says so in its log (never a false `install`)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dnf").write_text(FAKE_DNF)
    (bin_dir / "dnf").chmod(0o755)
    repo_file = tmp_path / "yum.repos.d" / "vmharness-install.repo"
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("REPO_FILE", str(repo_file))
    monkeypatch.setenv("FAKE_DNF_LOG", str(tmp_path / "calls.log"))
    monkeypatch.setattr(agent, "OUTPUT_DIR", str(out))
    monkeypatch.setattr(agent, "REPO_FILE_INSTALL", str(repo_file))
    monkeypatch.setattr(agent.time, "sleep", lambda s: None)
    a = agent.Agent()
    a.pm = "dnf"
    logged: list[str] = []
    monkeypatch.setattr(a, "log", logged.append)
    a.use_proxy("http://10.0.2.2:3142")  # as choose_proxy does when the probe answers
    a.install([{"id": "v1", "baseurl": "http://10.0.2.2:8080/v1/", "gpgcheck": "0"}], ["hello"])
    assert "proxy=" not in repo_file.read_text()  # rewritten without it
    assert "baseurl=http://10.0.2.2:8080/v1/" in repo_file.read_text()  # the guest's own address
    assert any(agent.PROXY_FALLBACK_NOTE in line for line in logged), logged
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert calls == [
        "fake dnf -y --setopt=install_weak_deps=False makecache",  # through the proxy: fails
        "fake dnf -y --setopt=install_weak_deps=False makecache",  # direct
        "fake dnf -y --setopt=install_weak_deps=False install hello",
    ]
    assert "Curl error (7)" in (out / "install.log").read_text()


def test_a_repository_that_cannot_be_reached_is_the_network_not_install(
    agent: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dnf").write_text(
        "#!/bin/sh\necho 'Curl error (6): Could not resolve host name for http://nowhere/'\n"
        "exit 1\n"
    )
    (bin_dir / "dnf").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setattr(agent, "OUTPUT_DIR", str(tmp_path))
    monkeypatch.setattr(agent, "REPO_FILE_INSTALL", str(tmp_path / "r.repo"))
    monkeypatch.setattr(agent.time, "sleep", lambda s: None)
    a = agent.Agent()
    a.pm = "dnf"
    monkeypatch.setattr(a, "log", lambda line: None)
    with pytest.raises(agent.PhaseFailed) as info:
        a.install([{"id": "far", "baseurl": "http://nowhere/"}], ["hello"])
    assert info.value.counts_as == "network" and info.value.unreachable
    assert (tmp_path / "install.log").read_text().count("$ dnf -y") == 3  # makecache, 3 tries


FAKE_APT = """#!/bin/sh
# A stand-in for apt-get: through the proxy (its configuration file exists) a package comes
# back with another size (a stale copy in the cache); direct, all is well. Logs its arguments.
echo "fake apt-get $*" >> "$FAKE_APT_LOG"
case "$*" in *install*)
  if [ -e "$PROXY_CONF" ]; then
    echo "E: Failed to fetch http://x/hello.deb  File has unexpected size (610 != 612)."
    exit 100
  fi;;
esac
exit 0
"""


def test_apt_through_a_cache_with_a_stale_copy_goes_direct_with_lists_fetched_again(
    agent: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """apt's lists of a repository on the host name it as the host's proxy saw it (127.0.0.1):
    going direct, the agent fetches them again at 10.0.2.2 before it installs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text(FAKE_APT)
    (bin_dir / "apt-get").chmod(0o755)
    sources, proxy_conf = tmp_path / "sources.list", tmp_path / "00proxy"
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("PROXY_CONF", str(proxy_conf))
    monkeypatch.setenv("FAKE_APT_LOG", str(tmp_path / "calls.log"))
    for name, value in (("OUTPUT_DIR", tmp_path), ("SOURCES_LIST", sources)):
        monkeypatch.setattr(agent, name, str(value))
    monkeypatch.setattr(agent, "PROXY_CONF", str(proxy_conf))
    monkeypatch.setattr(agent, "LISTS_DIR", str(tmp_path / "lists"))
    monkeypatch.setattr(agent.time, "sleep", lambda s: None)
    monkeypatch.setattr(
        agent.os.path,
        "exists",
        lambda p, real=agent.os.path.exists: False if p == "/usr/bin/eatmydata" else real(p),
    )
    a = agent.Agent()
    logged: list[str] = []
    monkeypatch.setattr(a, "log", logged.append)
    a.use_proxy("http://10.0.2.2:3142")
    a.install(["deb [trusted=yes] http://10.0.2.2:8080/v1/ ./"], ["hello"])
    assert "10.0.2.2:8080" in sources.read_text() and not proxy_conf.exists()
    assert any(agent.PROXY_FALLBACK_NOTE in line for line in logged), logged
    calls = [c.split()[-1] for c in (tmp_path / "calls.log").read_text().splitlines()]
    # update and install through the proxy; then update (again, direct) and install.
    assert calls == ["pkgCacheFile::Generate=false", "hello"] * 2
