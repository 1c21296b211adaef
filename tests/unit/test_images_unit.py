"""Recipes, certificates, the image cache's keys and bookkeeping, the mirror check (no VM).

Nothing here builds an image: the cache tests work on hand-written image folders, and the
mirror test stops (as it must) before anything is built.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import stat
import time
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from vmharness.errors import InfraError, SpecError
from vmharness.images import build as builder
from vmharness.images.cache import DEFAULT_MAX_AGE_S, ImageCache, default_cache_root
from vmharness.images.certs import ensure_ca, issue_host_cert, user_credentials
from vmharness.images.recipe import DEFAULT_HOSTNAME, builtin_names, load_recipe

UNREACHABLE = "http://127.0.0.1:9/debian"  # the discard port: nothing listens, refused at once


def write_recipe(tmp_path: Path, text: str, name: str = "my-recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def recipe_error(path: Path) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_recipe(str(path))
    return info.value


# -- recipes ---------------------------------------------------------------------------------
def test_builtin_recipes_load() -> None:
    assert {"debian-12", "debian-13"} <= set(builtin_names())
    r12, r13 = load_recipe("debian-12"), load_recipe("debian-13")
    assert (r12.suite, r13.suite) == ("bookworm", "trixie")
    assert r12.hostname == DEFAULT_HOSTNAME
    assert r12.apt_source == "deb http://deb.debian.org/debian bookworm main"


def test_recipe_file_with_own_mirror_and_packages(tmp_path: Path) -> None:
    path = write_recipe(
        tmp_path,
        "suite: bookworm\nmirror: http://mirror.example/debian\n"
        "packages: [curl, jq]\nhostname: box.test.lan\n"
        "disk_size: 1536M\n",
    )
    r = load_recipe(str(path))
    assert r.name == "my-recipe" and r.mirror == "http://mirror.example/debian"
    assert r.packages == ("curl", "jq") and r.hostname == "box.test.lan"
    assert r.disk_size_mib == 1536


def test_recipe_with_own_certificate(tmp_path: Path) -> None:
    creds = issue_host_cert(tmp_path / "ca", "vmtest.localdomain")
    (tmp_path / "host.pem").write_bytes(creds.cert_pem)
    (tmp_path / "host.key").write_bytes(creds.key_pem)
    path = write_recipe(tmp_path, "certificate: {cert: host.pem, key: host.key}\n")
    r = load_recipe(str(path))
    assert r.cert_file == tmp_path / "host.pem"
    bad = write_recipe(tmp_path, "certificate: {cert: host.pem, key: missing.key}\n", "b.yaml")
    err = recipe_error(bad)
    assert err.field == "certificate" and "missing.key" in str(err)


@pytest.mark.parametrize(
    "text,line,field,words",
    [
        ("suite: bookworm\nflavour: vanilla\n", 2, "flavour", "unknown field"),
        ("suite: bookworm\npackages: curl\n", 2, "packages", "wrong type"),
        ("components: main\n", 1, "components", "wrong type"),
        ("packages: [curl, 3]\n", 1, "packages", "list of strings"),
        ("packages: [curl, 'Not A Package']\n", 1, "packages", "not a package name"),
        ("suite: bookworm\n\nhostname: Not_A_Host\n", 3, "hostname", "fully qualified"),
        ("hostname: vmtest\n", 1, "hostname", "fully qualified"),
        ("disk_size: 100M\n", 1, "disk_size", "at least 512M"),
        ("disk_size: lots\n", 1, "disk_size", "not a size"),
        ("mirror: ftp.debian.org\n", 1, "mirror", "URL"),
        ("distribution: fedora\n", 1, "distribution", "only 'debian'"),
        ("certificate: self-signed\n", 1, "certificate", "generated"),
    ],
)
def test_recipe_errors_name_file_line_field(
    tmp_path: Path, text: str, line: int, field: str, words: str
) -> None:
    path = write_recipe(tmp_path, text)
    err = recipe_error(path)
    assert err.file == str(path)
    assert err.line == line
    assert err.field == field
    assert words in str(err)
    assert f"{path}:{line}" in str(err) and f"'{field}'" in str(err)
    assert err.exit_code == 2


@pytest.mark.parametrize(
    "text,line",
    [
        ("suite: [bookworm\n", 2),
        ("suite: bookworm\npackages:\n  - curl\n  - : x\n", 4),
        ("suite: bookworm\n\tmirror: x\n", 2),
    ],
)
def test_recipe_yaml_syntax_error_names_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    path = write_recipe(tmp_path, text)
    err = recipe_error(path)
    assert err.file == str(path) and err.line == line
    assert "YAML syntax error" in str(err)


def test_recipe_yaml_syntax_error_names_the_field(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, "suite: bookworm\npackages: [curl, jq\nhostname: a.b\n")
    assert recipe_error(path).field == "packages"


@pytest.mark.parametrize("name", ["../../outside", "a/b"])
def test_recipe_name_cannot_be_a_path(tmp_path: Path, name: str) -> None:
    err = recipe_error(write_recipe(tmp_path, f"name: {name!r}\n"))
    assert err.field == "name"


def test_recipe_with_a_non_scalar_key(tmp_path: Path) -> None:
    recipe_error(write_recipe(tmp_path, "? [a, b]\n: c\n"))


def test_recipe_not_a_mapping_and_missing(tmp_path: Path) -> None:
    err = recipe_error(write_recipe(tmp_path, "- a\n- b\n"))
    assert err.file and err.line == 1
    with pytest.raises(SpecError, match="no recipe named"):
        load_recipe("no-such-recipe")


# -- certificates ----------------------------------------------------------------------------
def test_host_certificate_verifies_against_the_ca(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    creds = issue_host_cert(ca_dir, "vmtest.localdomain")
    ca = x509.load_pem_x509_certificate(creds.ca_pem)
    host = x509.load_pem_x509_certificate(creds.cert_pem)
    host.verify_directly_issued_by(ca)  # signature, issuer name; raises if not
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not host.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = host.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "vmtest.localdomain" in san.get_values_for_type(x509.DNSName)
    eku = host.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    key = serialization.load_pem_private_key(creds.key_pem, password=None)
    assert key.public_key().public_numbers() == host.public_key().public_numbers()
    now = time.time()
    assert host.not_valid_before_utc.timestamp() < now < host.not_valid_after_utc.timestamp()
    # the CA key file is private
    mode = stat.S_IMODE((ca_dir / "ca.key").stat().st_mode)
    assert mode == 0o600, oct(mode)


def test_ca_is_made_once(tmp_path: Path) -> None:
    first = ensure_ca(tmp_path / "ca")
    again = ensure_ca(tmp_path / "ca")
    assert first == again
    a = issue_host_cert(tmp_path / "ca", "a.localdomain")
    b = issue_host_cert(tmp_path / "ca", "b.localdomain")
    assert a.ca_pem == b.ca_pem and a.fingerprint() == b.fingerprint()
    other = issue_host_cert(tmp_path / "other-ca", "a.localdomain")
    assert other.fingerprint() != a.fingerprint()


def _key_markers(ca_key_pem: bytes) -> list[bytes]:
    """The CA key as PEM, as DER, and its private scalar (raw, hex, and as base64 in the PEM).

    Not the PEM's head or tail: every P-256 PKCS#8 key starts with the same 36 header bytes
    and ends with the public key, which the CA certificate holds.
    """
    body = b"".join(line for line in ca_key_pem.splitlines() if not line.startswith(b"-----"))
    der = base64.b64decode(body)
    key = serialization.load_pem_private_key(ca_key_pem, password=None)
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    assert base64.b64decode(body[48:88])[:30] == scalar[:30]  # 36 header bytes = 48 chars
    return [ca_key_pem.strip(), der, scalar, scalar.hex().encode(), body[48:64]]


def test_ca_key_never_enters_the_overlay(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")
    recipe = load_recipe("debian-12")
    creds = cache.credentials(recipe)
    overlay = tmp_path / "overlay"
    builder._write_overlay(overlay, recipe, creds, builder.agent_files())
    _ca_cert, ca_key = ensure_ca(cache.ca_dir)
    files = [p for p in overlay.rglob("*") if p.is_file()]
    assert len(files) > 8
    markers = _key_markers(ca_key)
    for path in files:
        data = path.read_bytes()
        for marker in markers:
            assert marker not in data, f"CA key material in {path.relative_to(overlay)}"
    # what must be there: the host pair (private), the CA certificate, the fixed name
    assert (overlay / "etc/vmharness/hostcert.pem").read_bytes() == creds.cert_pem
    assert stat.S_IMODE((overlay / "etc/vmharness/hostkey.pem").stat().st_mode) == 0o600
    assert (
        overlay / "usr/local/share/ca-certificates/vmharness-test-ca.crt"
    ).read_bytes() == creds.ca_pem
    assert recipe.hostname in (overlay / "etc/hosts").read_text()
    assert os.access(overlay / "usr/local/sbin/vmharness-agent", os.X_OK)
    assert (overlay / "etc/systemd/system/vmharness-agent.service").is_file()
    # and the customize hook does not copy the CA folder in either
    script = builder._customize_script(overlay, with_ca=True)
    assert str(cache.ca_dir) not in script


def test_user_certificate_has_no_ca_in_the_overlay(tmp_path: Path) -> None:
    creds = issue_host_cert(tmp_path / "ca", "vmtest.localdomain")
    (tmp_path / "c.pem").write_bytes(creds.cert_pem)
    (tmp_path / "k.pem").write_bytes(creds.key_pem)
    mine = user_credentials(tmp_path / "c.pem", tmp_path / "k.pem")
    overlay = tmp_path / "overlay"
    builder._write_overlay(overlay, load_recipe("debian-12"), mine, builder.agent_files())
    assert not (overlay / "usr/local/share/ca-certificates/vmharness-test-ca.crt").exists()
    assert (overlay / "etc/grid-security/hostcert.pem").read_bytes() == creds.cert_pem


# -- cache keys ------------------------------------------------------------------------------
def test_cache_key_is_stable_and_follows_what_shapes_the_image(tmp_path: Path, monkeypatch) -> None:
    cache = ImageCache(tmp_path / "cache")
    recipe = load_recipe("debian-12")
    key = cache.key_for(recipe)
    assert key == cache.key_for(recipe), "two calls must give the same key"
    assert len(key) == 64
    changed = {
        "hostname": replace(recipe, hostname="other.localdomain"),
        "packages": replace(recipe, packages=("curl",)),
        "mirror": replace(recipe, mirror="http://mirror.example/debian"),
        "suite": replace(recipe, suite="trixie"),
        "disk size": replace(recipe, disk_size_mib=4096),
    }
    keys = {what: cache.key_for(r) for what, r in changed.items()}
    for what, k in keys.items():
        assert k != key, f"the key ignores the {what}"
    assert len(set(keys.values())) == len(keys)
    # where a recipe was read from does not shape the image
    assert cache.key_for(replace(recipe, source="elsewhere.yaml")) == key
    # another CA (another cache root) is another image: its certificates differ
    assert ImageCache(tmp_path / "other").key_for(recipe) != key
    # the agent is baked into the image
    real = builder.agent_files()
    patched = {**real, "vmharness-agent": real["vmharness-agent"] + b"\n# changed\n"}
    monkeypatch.setattr(builder, "agent_files", lambda: patched)
    assert cache.key_for(recipe) != key


def test_default_cache_root_honours_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VMHARNESS_CACHE", str(tmp_path / "c"))
    assert default_cache_root() == tmp_path / "c"
    assert ImageCache().root == tmp_path / "c"
    monkeypatch.delenv("VMHARNESS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == tmp_path / "xdg" / "vmharness"


# -- cache bookkeeping on hand-made image folders --------------------------------------------
def fake_image(cache: ImageCache, recipe: str, key: str, age_s: float, *, tag: str = "") -> Path:
    built = time.time() - age_s
    folder = cache.images_dir / f"{recipe}-{key[:12]}-{int(built)}{tag}"
    folder.mkdir(parents=True)
    for name in ("disk.qcow2", "vmlinuz", "initrd.img"):
        (folder / name).write_bytes(b"x")
    meta = {
        "recipe": recipe,
        "key": key,
        "built_at": built,
        "sha256": "ab" * 32,
        "size_bytes": 1,
        "hostname": DEFAULT_HOSTNAME,
        "kernel_version": "6.1",
        "cmdline": "root=/dev/vda2",
        "apt_source": "deb x bookworm main",
        "suite": "bookworm",
    }
    (folder / "image.json").write_text(json.dumps(meta))
    for p in folder.iterdir():
        p.chmod(0o444)  # as published: read-only
    return folder


def test_lookup_picks_the_newest_fresh_image_of_the_key(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path)
    recipe = load_recipe("debian-12")
    key = "k" * 64
    old = fake_image(cache, "debian-12", key, 3 * 3600)
    new = fake_image(cache, "debian-12", key, 3600)
    fake_image(cache, "debian-12", "z" * 64, 10)  # newer, but another key
    stale = fake_image(cache, "debian-12", key, DEFAULT_MAX_AGE_S + 60, tag="-stale")
    (cache.images_dir / "half-made").mkdir()  # no image.json: ignored
    found = cache.lookup(recipe, key=key)
    assert found is not None and found.folder == new
    assert found.disk == new / "disk.qcow2" and 3500 < found.age_s() < 3700
    assert cache.lookup(recipe, max_age_s=2 * 3600, key=key).folder == new
    assert cache.lookup(recipe, max_age_s=1800, key=key) is None  # all too old
    assert cache.lookup(recipe, key="n" * 64) is None
    listed = {i.folder for i in cache.list()}
    assert {old, new, stale} <= listed and cache.images_dir / "half-made" not in listed


def test_prune_keeps_the_newest_per_recipe(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path)
    a_old = fake_image(cache, "debian-12", "a" * 64, 300)
    a_new = fake_image(cache, "debian-12", "b" * 64, 100)
    b_only = fake_image(cache, "debian-13", "c" * 64, 500)
    broken = cache.images_dir / "debian-12-broken"
    broken.mkdir()
    (broken / "image.json").write_text("{not json")
    (tmp_path / "tmp" / "debian-12-crashed").mkdir(parents=True)  # a crashed build

    planned = cache.prune(keep=1, dry_run=True)
    assert set(planned) == {a_old, broken, tmp_path / "tmp" / "debian-12-crashed"}
    assert a_old.exists() and broken.exists(), "dry run removed something"

    removed = cache.prune(keep=1)
    assert set(removed) == set(planned)
    assert not a_old.exists() and not broken.exists()
    assert a_new.exists() and b_only.exists()
    assert cache.prune(keep=1) == []  # nothing left to do
    assert set(cache.prune(keep=0)) == {a_new, b_only}
    assert cache.list() == []


def test_prune_leaves_a_build_in_progress(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path)
    work = tmp_path / "tmp" / "debian-12-building"
    work.mkdir(parents=True)
    (tmp_path / "locks").mkdir()
    with open(tmp_path / "locks" / ("k" * 64 + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a running build holds it
        assert cache.prune(keep=1) == []
        assert work.exists()
    assert cache.prune(keep=1) == [work]


# -- mirror ----------------------------------------------------------------------------------
def test_unreachable_mirror_fails_fast_and_clearly() -> None:
    recipe = replace(load_recipe("debian-12"), mirror=UNREACHABLE)
    t0 = time.monotonic()
    with pytest.raises(InfraError) as info:
        builder.check_mirror(recipe)
    assert time.monotonic() - t0 < 5
    assert "not reachable" in str(info.value) and "127.0.0.1:9" in str(info.value)
    assert info.value.hint and "cache was not touched" in info.value.hint
    assert info.value.exit_code == 3


def test_file_mirror_without_the_suite(tmp_path: Path) -> None:
    recipe = replace(load_recipe("debian-12"), mirror=f"file://{tmp_path}")
    with pytest.raises(InfraError, match="no dists/bookworm"):
        builder.check_mirror(recipe)
    (tmp_path / "dists" / "bookworm").mkdir(parents=True)
    builder.check_mirror(recipe)  # fine now


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def test_unreachable_mirror_leaves_the_cache_untouched(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")
    existing = fake_image(cache, "debian-12", "e" * 64, 60)  # another image already there
    images_before = _tree(cache.images_dir)
    recipe = replace(load_recipe("debian-12"), mirror=UNREACHABLE)
    t0 = time.monotonic()
    with pytest.raises(InfraError) as info:
        cache.get(recipe)
    assert time.monotonic() - t0 < 10
    if os.geteuid() == 0 and all(shutil.which(t) for t in builder.REQUIRED_TOOLS):
        assert "not reachable" in str(info.value)  # the mirror check itself stopped it
    assert _tree(cache.images_dir) == images_before
    assert existing.exists()
    assert _tree(cache.root / "tmp") == set(), "a build folder was left behind"
