"""The guest agent's pure helpers, run on the host: it is standard-library Python, so its
functions can be loaded from the file that goes into the image, unchanged."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import shutil
import subprocess
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from vmharness.images.disks import make_input_disk, make_output_disk

AGENT = Path(__file__).resolve().parents[2] / "src" / "vmharness" / "guest" / "vmharness-agent"


@pytest.fixture(scope="module")
def agent() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("vmharness_agent", str(AGENT))
    spec = importlib.util.spec_from_loader("vmharness_agent", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)  # the `__main__` block does not run
    return module


@pytest.mark.skipif(not shutil.which("mkfs.fat"), reason="needs dosfstools and e2fsprogs")
@pytest.mark.parametrize("size_mib", [8, 300])  # FAT16 and FAT32 layouts
def test_the_agent_finds_the_disks_the_host_makes_by_their_labels(
    agent: ModuleType, tmp_path: Path, size_mib: int
) -> None:
    make_input_disk(tmp_path / "in.img", "version = 1\n")
    make_output_disk(tmp_path / "out.img", size_mib)
    assert agent.disk_label(str(tmp_path / "in.img")) == agent.INPUT_LABEL
    assert agent.disk_label(str(tmp_path / "out.img")) == agent.OUTPUT_LABEL


def test_a_disk_without_a_filesystem_has_no_label(agent: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "zero.img").write_bytes(bytes(4096))
    (tmp_path / "short.img").write_bytes(b"\x55\xaa")
    assert agent.disk_label(str(tmp_path / "zero.img")) is None
    assert agent.disk_label(str(tmp_path / "short.img")) is None
    assert agent.disk_label(str(tmp_path / "missing.img")) is None


@pytest.mark.skipif(not Path("/var/lib/dpkg/status").is_file(), reason="not a Debian host")
def test_package_lists_match_dpkg_query(
    agent: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent reads dpkg's status file itself (no process); its lines must be dpkg-query's."""
    monkeypatch.setattr(agent, "OUTPUT_DIR", str(tmp_path))
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    monkeypatch.setattr(agent, "NATIVE_ARCH", arch)
    agent.Agent.list_packages(SimpleNamespace(pm="apt"), "packages.txt")
    fmt = "${Package}:${Architecture}\t${Version}\t${Status}\n"
    out = subprocess.run(["dpkg-query", "-W", "-f", fmt], capture_output=True, text=True).stdout
    expected = sorted(
        line.replace(f":{arch}\t", "\t").replace(":all\t", "\t") + "\n" for line in out.splitlines()
    )
    got = (tmp_path / "packages.txt").read_text().splitlines(keepends=True)
    assert got == expected
    assert len(got) > 50


def test_fqdn_prefers_the_dotted_name_of_this_host(
    agent: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.1.1 vmtest.localdomain vmtest # fixed name\n")
    real_open = open

    def fake_open(path: str, *args: object, **kw: object):  # type: ignore[no-untyped-def]
        return real_open(hosts if path == "/etc/hosts" else path, *args, **kw)  # type: ignore[call-overload]

    monkeypatch.setattr(agent.os, "uname", lambda: type("U", (), {"nodename": "vmtest"})())
    monkeypatch.setattr("builtins.open", fake_open)
    assert agent.fqdn() == "vmtest.localdomain"
    hosts.write_text("127.0.0.1 localhost\n")
    assert agent.fqdn() == "vmtest"


@pytest.mark.skipif(not shutil.which("gpg"), reason="needs gpg to compare with")
def test_the_agent_dearmors_apt_keys_as_gpg_does(agent: ModuleType, tmp_path: Path) -> None:
    """apt-key goes over each key file, dearmoring .asc ones, for every signature it checks
    (seconds under TCG): the agent hands its apt runs the same keys as one binary keyring,
    byte for byte what gpg makes of them."""
    keys = sorted(Path("/usr/share/keyrings").glob("*.asc")) + sorted(
        Path("/etc/apt/trusted.gpg.d").glob("*.asc")
    )
    if not keys:
        pytest.skip("no armoured keys on this host")
    source = tmp_path / "trusted.gpg.d"
    source.mkdir()
    for key in keys:
        shutil.copy(key, source / key.name)
    (source / "binary.gpg").write_bytes(b"\x99binary")
    (source / "README").write_text("not a key")
    target = tmp_path / "dearmored"
    target.mkdir()
    (target / "stale.gpg").write_bytes(b"a key removed since")
    assert agent.dearmored_trusted_parts(str(source), str(target))
    assert [p.name for p in target.iterdir()] == [agent.AGENT_KEYRING]
    expected = b""
    for name in sorted(p.name for p in source.iterdir()):
        if name == "binary.gpg":
            expected += b"\x99binary"
        elif name.endswith(".asc"):
            data = (source / name).read_bytes()
            ref = subprocess.run(["gpg", "--dearmor"], input=data, capture_output=True)
            expected += ref.stdout
    assert (target / agent.AGENT_KEYRING).read_bytes() == expected


def test_a_key_that_is_not_armour_leaves_apt_to_its_own_way(
    agent: ModuleType, tmp_path: Path
) -> None:
    source = tmp_path / "trusted.gpg.d"
    source.mkdir()
    (source / "broken.asc").write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnot base64!\n")
    assert not agent.dearmored_trusted_parts(str(source), str(tmp_path / "out"))
    with pytest.raises(ValueError):
        agent.dearmor("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n-----END PGP PUBLIC KEY BLOCK-----")
    assert agent.dearmor(
        "-----BEGIN PGP PUBLIC KEY BLOCK-----\nComment: x\n\nAQID\n=abcd\n"
        "-----END PGP PUBLIC KEY BLOCK-----\n"
    ) == bytes([1, 2, 3])


class _Mirror:
    """A mirror (or a proxy: requests by absolute URL) on 127.0.0.1 serving FILES by path."""

    def __init__(self, files: dict[str, bytes]) -> None:
        import http.server
        import threading

        self.files, self.requests = files, []
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                mirror.requests.append(self.path)
                path = self.path.split("://", 1)[-1].split("/", 1)[-1]
                body = mirror.files.get("/" + path)
                self.send_response(200 if body is not None else 404)
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_image_lists_are_current_only_if_every_inrelease_is_the_same(
    agent: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """apt-get update is skipped only when it would find nothing new: every InRelease of the
    sources, fetched now, is byte for byte the lists' copy."""
    lists, parts = tmp_path / "lists", tmp_path / "sources.list.d"
    lists.mkdir()
    parts.mkdir()
    monkeypatch.setattr(agent, "LISTS_DIR", str(lists))
    monkeypatch.setattr(agent, "SOURCES_PARTS", str(parts))
    monkeypatch.setattr(agent, "SOURCES_LIST", str(tmp_path / "sources.list"))
    mirror = _Mirror({"/debian/dists/stable/InRelease": b"signed release 1"})
    try:
        host = f"127.0.0.1:{mirror.port}"
        (tmp_path / "sources.list").write_text(
            f"# the image's\ndeb http://{host}/debian stable main  # comment\n\n"
        )
        name = f"127.0.0.1:{mirror.port}_debian_dists_stable_InRelease"
        assert agent.release_file(f"deb http://{host}/debian stable main") == (
            f"http://{host}/debian/dists/stable/InRelease",
            name,
        )
        assert agent.lists_unchanged(None) is None  # apt has no copy yet
        (lists / name).write_bytes(b"signed release 1")
        assert "1 InRelease file(s) fetched in" in agent.lists_unchanged(None)
        # through a proxy: the request names the whole URL
        proxy = _Mirror(mirror.files)
        try:
            assert "through the proxy" in agent.lists_unchanged(f"http://127.0.0.1:{proxy.port}")
            assert proxy.requests == [f"http://{host}/debian/dists/stable/InRelease"]
        finally:
            proxy.close()
        mirror.files["/debian/dists/stable/InRelease"] = b"signed release 2"  # published
        assert agent.lists_unchanged(None) is None
        mirror.files["/debian/dists/stable/InRelease"] = b"signed release 1"
        (parts / "extra.list").write_text(f"deb http://{host}/extra ./\n")  # flat: left to apt
        assert agent.lists_unchanged(None) is None
        (parts / "extra.list").unlink()
        (parts / "other.sources").write_text("Types: deb\n")  # deb822: left to apt
        assert agent.lists_unchanged(None) is None
        (parts / "other.sources").unlink()
        assert agent.lists_unchanged(None)
    finally:
        mirror.close()
    assert agent.lists_unchanged(None) is None  # the mirror cannot be reached: apt decides
    for line in (
        "deb [signed-by=/k.gpg] http://h/debian stable main",
        "deb https://h/debian stable main",
        "deb-src http://h/debian stable main",
        "deb http://h/debian stable",
        "deb http://h/de%20bian stable main",
    ):
        assert agent.release_file(line) is None, line
