"""A tiny flat apt repository for the VM tests: a one-script package, built and published."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path


def make_deb(tmp: Path, name: str, version: str) -> Path:
    """Package NAME at VERSION: /usr/bin/NAME prints "NAME VERSION"."""
    pkg = tmp / f"build-{name}-{version}"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "usr" / "bin").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: vmharness tests <tests@localhost>\nDescription: says its version\n"
    )
    script = pkg / "usr" / "bin" / name
    script.write_text(f"#!/bin/sh\necho {name} {version}\n")
    script.chmod(0o755)
    deb = tmp / f"{name}_{version}_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(pkg), str(deb)],
        check=True,
        capture_output=True,
    )
    return deb


def publish(folder: Path, deb: Path, *, suite: str = "tests", stamp: float | None = None) -> None:
    """(Re)publish a flat repository in FOLDER holding only DEB, its Packages and a Release
    that lists it; files dated STAMP (If-Modified-Since has a resolution of a second, so a
    republication must be dated later)."""
    stamp = time.time() if stamp is None else stamp
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.deb"):
        old.unlink()
    shutil.copy(deb, folder / deb.name)
    data = deb.read_bytes()
    control = subprocess.run(
        ["dpkg-deb", "-f", str(deb)], check=True, capture_output=True, text=True
    ).stdout.strip()
    packages = (
        f"{control}\nFilename: ./{deb.name}\nSize: {len(data)}\n"
        f"SHA256: {hashlib.sha256(data).hexdigest()}\n\n"
    ).encode()
    (folder / "Packages").write_bytes(packages)
    (folder / "Release").write_text(
        f"Origin: vmharness-tests\nLabel: vmharness-tests\nSuite: {suite}\nCodename: {suite}\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S UTC', time.gmtime(stamp))}\n"
        f"Architectures: all amd64\nSHA256:\n {hashlib.sha256(packages).hexdigest()} "
        f"{len(packages)} Packages\n"
    )
    for path in folder.iterdir():
        os.utime(path, (stamp, stamp))
