"""The base-image cache: content-keyed, read-only, published atomically, aged, pruned.

Layout under the cache root (default ~/.cache/vmharness, or $VMHARNESS_CACHE):
    images/<recipe>-<key12>-<built>/   one published image: disk.qcow2, vmlinuz, initrd.img,
                                       image.json; read-only, never modified by a run
    tmp/                               builds in progress (a crashed build leaves only this)
    locks/<key>.lock                   one builder per key; others wait and reuse its result
    ca/                                the test CA (its key never enters an image)
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..wire.codec import decode, read_json, write_json_atomic
from ..wire.files import sha256_file
from . import build as builder
from . import imports as importer
from .certs import HostCredentials, issue_host_cert, user_credentials
from .recipe import DEFAULT_HOSTNAME, Recipe, builtin_names, valid_name

# Bump when the build's output changes shape (layout, customizations) for the same inputs.
IMAGE_FORMAT = 9  # 9: package lists and apt caches kept, eatmydata, unsafe-io
DEFAULT_MAX_AGE_S = 7 * 24 * 3600


def default_cache_root() -> Path:
    env = os.environ.get("VMHARNESS_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vmharness"


@dataclass(frozen=True)
class BaseImage:
    recipe: str
    key: str
    folder: Path
    built_at: float
    sha256: str  # of disk.qcow2: the content-addressed name pools and caches use
    size_bytes: int
    hostname: str
    kernel_version: str
    cmdline: str
    apt_source: str
    suite: str
    # Empty for an image built from a recipe; for an imported one, the file it came from
    # (as `vmharness image import` was given it), its distribution and its sha256.
    origin: str = ""

    @property
    def disk(self) -> Path:
        return self.folder / "disk.qcow2"

    @property
    def kernel(self) -> Path:
        return self.folder / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.folder / "initrd.img"

    @property
    def content_name(self) -> str:
        return f"{self.recipe}-{self.sha256[:16]}.qcow2"

    def age_s(self, now: float | None = None) -> float:
        return (now or time.time()) - self.built_at


class ImageCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or default_cache_root()
        self.images_dir = self.root / "images"
        self.ca_dir = self.root / "ca"

    # -- keys -------------------------------------------------------------------------------
    def credentials(self, recipe: Recipe) -> HostCredentials:
        if recipe.cert_file and recipe.key_file:
            return user_credentials(recipe.cert_file, recipe.key_file)
        return issue_host_cert(self.ca_dir, recipe.hostname)

    def key_for(self, recipe: Recipe, creds: HostCredentials | None = None) -> str:
        creds = creds or self.credentials(recipe)
        agent = hashlib.sha256()
        for name, data in sorted(builder.agent_files().items()):
            agent.update(name.encode() + b"\0" + data)
        shape = {
            "format": IMAGE_FORMAT,
            "recipe": recipe.shape(),
            "agent": agent.hexdigest(),
            "credentials": creds.fingerprint(),
            "cmdline": builder.KERNEL_CMDLINE,
            "masked": builder.MASKED_UNITS,
            "base_packages": builder.BASE_PACKAGES,
            "initrd": builder.INITRD_FORMAT,
        }
        blob = json.dumps(shape, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    # -- queries ----------------------------------------------------------------------------
    def list(self) -> list[BaseImage]:
        images = []
        if self.images_dir.is_dir():
            for folder in self.images_dir.iterdir():
                image = self._read(folder)
                if image:
                    images.append(image)
        return sorted(images, key=lambda i: (i.recipe, -i.built_at))

    def lookup(
        self, recipe: Recipe, max_age_s: float = DEFAULT_MAX_AGE_S, key: str | None = None
    ) -> BaseImage | None:
        """The newest published image for this recipe's key that is younger than max_age_s."""
        key = key or self.key_for(recipe)
        fresh = [i for i in self.list() if i.key == key and i.age_s() < max_age_s]
        return max(fresh, key=lambda i: i.built_at) if fresh else None

    def _read(self, folder: Path) -> BaseImage | None:
        try:
            meta = read_json(folder / "image.json", limit=1 << 20)
            return decode(BaseImage, {**meta, "folder": str(folder)})
        except (OSError, ValueError, TypeError):  # WireError is a ValueError
            return None  # not a complete image (or not ours): ignored, pruned later

    # -- building ---------------------------------------------------------------------------
    def get(
        self,
        recipe: Recipe,
        *,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        rebuild: bool = False,
        progress: builder.Progress = lambda _m: None,
    ) -> BaseImage:
        """The cached image for the recipe, built first when missing, too old or asked for."""
        creds = self.credentials(recipe)
        key = self.key_for(recipe, creds)
        if not rebuild:
            image = self.lookup(recipe, max_age_s, key)
            if image:
                return image
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        started = time.time()
        with open(lock_dir / f"{key}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                progress("another build of this image is under way; waiting for it")
                fcntl.flock(lock, fcntl.LOCK_EX)
            # Whoever held the lock may have just published it.
            image = self.lookup(recipe, max_age_s, key)
            if image and (not rebuild or image.built_at >= started):
                return image
            try:
                return self._build(recipe, creds, key, progress)
            except builder.MirrorUnreachable as exc:
                # An old image beats no run at all when the rebuild was only due to age.
                stale = self.lookup(recipe, float("inf"), key)
                if stale is None or rebuild:
                    raise
                progress(
                    f"WARNING: {exc}; using the cached image from "
                    f"{stale.age_s() / 86400:.1f} days ago"
                )
                return stale

    def _build(
        self, recipe: Recipe, creds: HostCredentials, key: str, progress: builder.Progress
    ) -> BaseImage:
        builder.check_tools()
        builder.check_mirror(recipe)
        tmp_root = self.root / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"{recipe.name}-", dir=tmp_root))
        t0 = time.monotonic()
        try:
            files = builder.build(recipe, creds, workdir, builder.agent_files(), progress)
            progress("hashing the disk for its content-addressed name")
            digest = sha256_file(files.disk)
            built_at = time.time()
            meta = {
                "recipe": recipe.name,
                "key": key,
                "built_at": built_at,
                "sha256": digest,
                "size_bytes": files.disk.stat().st_size,
                "hostname": recipe.hostname,
                "kernel_version": files.kernel_version,
                "cmdline": builder.KERNEL_CMDLINE,
                "apt_source": recipe.apt_source,
                "suite": recipe.suite,
                "recipe_source": recipe.source,
                "vmharness": __version__,
                "build_seconds": round(time.monotonic() - t0, 1),
            }
            keep = [files.disk, files.kernel, files.initrd, workdir / "mmdebstrap.log"]
            return self._publish(workdir, files.disk, meta, keep, progress, built_at=built_at)
        except BaseException:
            remove_read_only(workdir)
            raise

    def _publish(
        self,
        workdir: Path,
        disk: Path,
        meta: dict,
        keep: builtins.list[Path],
        progress: builder.Progress,
        built_at: float | None = None,
    ) -> BaseImage:
        """Make `workdir` (the disk, kernel, initrd and `keep`) a published, read-only image."""
        if "sha256" not in meta:
            progress("hashing the disk for its content-addressed name")
            meta = {**meta, "sha256": sha256_file(disk), "size_bytes": disk.stat().st_size}
        built_at = built_at or time.time()
        meta = {"built_at": built_at, "vmharness": __version__, **meta}
        for leftover in workdir.iterdir():
            if leftover not in keep:
                remove_read_only(leftover)
        write_json_atomic(workdir / "image.json", meta)
        for path in workdir.iterdir():
            path.chmod(0o444)  # read-only: runs use overlays, never the image itself
        workdir.chmod(0o755)
        self.images_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(built_at))
        final = self.images_dir / f"{meta['recipe']}-{meta['key'][:12]}-{stamp}"
        os.rename(workdir, final)  # atomic publish: complete or absent
        image = self._read(final)
        assert image is not None
        return image

    # -- importing --------------------------------------------------------------------------
    def import_key(self, content_sha256: str, hostname: str, creds: HostCredentials) -> str:
        """An imported image's key: the file's content and everything vmharness puts in."""
        agent = hashlib.sha256()
        for name, data in sorted(builder.agent_files().items()):
            agent.update(name.encode() + b"\0" + data)
        shape = {
            "import_format": importer.IMPORT_FORMAT,
            "source_sha256": content_sha256,
            "hostname": hostname,
            "agent": agent.hexdigest(),
            "credentials": creds.fingerprint(),
            "kernel_flags": builder.KERNEL_FLAGS,
        }
        return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()

    def import_image(
        self,
        path: Path,
        *,
        name: str | None = None,
        hostname: str = DEFAULT_HOSTNAME,
        accel: str | Callable[[], str] = "tcg",
        progress: builder.Progress = lambda _m: None,
    ) -> BaseImage:
        """The vmharness image made from a bootable disk `path` (never written to): from the
        cache when this file's content was imported before, else imported now. `accel`: for
        libguestfs's appliance ('kvm' only where KVM really works here), or what tells it."""
        path = Path(os.path.abspath(path))
        tmp_root = self.root / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="import-check-", dir=tmp_root) as tmp:
            fmt = importer.check_file(path, Path(tmp))
        if name is None:
            name = importer.sanitize_name(path.name.split(".")[0])
            if name in builtin_names():  # debian-12.qcow2: not to be taken for the built one
                name += "-imported"
        if not valid_name(name):
            raise importer.ImageRefused(
                path, f"the name {name!r} is not letters, digits, '.', '_' and '-' (64 at most)"
            )
        if name in builtin_names():  # `image prune` keeps the newest N per name
            raise importer.ImageRefused(path, f"the name {name!r} is a built-in recipe's")
        progress(f"hashing {path.name}")
        content = self._content_sha256(path)
        creds = issue_host_cert(self.ca_dir, hostname)
        key = self.import_key(content, hostname, creds)
        image = self.lookup_key(key)
        if image:
            return image
        importer.check_tools()
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / f"{key}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                progress("another import of this image is under way; waiting for it")
                fcntl.flock(lock, fcntl.LOCK_EX)
            image = self.lookup_key(key)
            if image:
                return image
            workdir = importer.import_workdir(tmp_root, name)
            t0 = time.monotonic()
            try:
                disk, found = importer.import_disk(
                    path,
                    fmt,
                    workdir,
                    hostname=hostname,
                    creds=creds,
                    image_conf=f"hostname={hostname}\nimported={name}\nsource_sha256={content}\n",
                    accel=accel() if callable(accel) else accel,
                    progress=progress,
                )
                meta = {
                    "recipe": name,
                    "key": key,
                    "hostname": hostname,
                    "kernel_version": found.kernel_version,
                    "cmdline": found.cmdline,
                    "apt_source": "",  # the image keeps its own package sources
                    "suite": "",
                    "origin": f"{path} ({found.distro}, sha256 {content[:16]})",
                    "distro": found.distro,
                    "python": found.python,
                    "python_version": found.python_version,
                    "selinux": found.selinux or "",
                    "notes": found.notes,
                    "import_seconds": round(time.monotonic() - t0, 1),
                }
                keep = [
                    disk,
                    workdir / "vmlinuz",
                    workdir / "initrd.img",
                    workdir / "guestfish.log",
                ]
                return self._publish(workdir, disk, meta, keep, progress)
            except BaseException:
                remove_read_only(workdir)
                raise

    def lookup_key(self, key: str) -> BaseImage | None:
        """The newest image of this key, however old (imports do not age: their content
        is the file's)."""
        found = [i for i in self.list() if i.key == key]
        return max(found, key=lambda i: i.built_at) if found else None

    def _content_sha256(self, path: Path) -> str:
        """The file's sha256, remembered by (path, size, mtime, inode): a spec's image is
        looked up at every run, and hashing gigabytes each time costs seconds."""
        st = path.stat()
        ident = f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
        memo_dir = self.root / "import-hashes"
        memo = memo_dir / (hashlib.sha256(ident.encode()).hexdigest()[:32] + ".sha256")
        with contextlib.suppress(OSError):
            text = memo.read_text().strip()
            if re.fullmatch(r"[0-9a-f]{64}", text):
                return text
        digest = sha256_file(path)
        with contextlib.suppress(OSError):
            memo_dir.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(digest + "\n")
            os.replace(tmp, memo)
        return digest

    # -- pruning ----------------------------------------------------------------------------
    def prune(self, keep: int = 1, dry_run: bool = False) -> builtins.list[Path]:
        """Keep the newest `keep` images per recipe; remove the rest and stale build leftovers."""
        removed: builtins.list[Path] = []
        by_recipe: dict[str, builtins.list[BaseImage]] = {}
        for image in self.list():
            by_recipe.setdefault(image.recipe, []).append(image)
        for images in by_recipe.values():
            for image in sorted(images, key=lambda i: -i.built_at)[keep:]:
                removed.append(image.folder)
        if self.images_dir.is_dir():  # folders without a readable image.json
            known = {i.folder for i in self.list()}
            removed += [f for f in self.images_dir.iterdir() if f not in known]
        tmp_root = self.root / "tmp"
        if tmp_root.is_dir():
            for leftover in tmp_root.iterdir():
                if not _locked_build(self.root, leftover):
                    removed.append(leftover)
        if not dry_run:
            for path in removed:
                remove_read_only(path)
        return removed


def _locked_build(root: Path, workdir: Path) -> bool:
    # A build in progress holds its key's lock; leftovers older than a day are crashed builds.
    try:
        return time.time() - workdir.stat().st_mtime < 24 * 3600 and any(
            _is_locked(p) for p in (root / "locks").glob("*.lock")
        )
    except OSError:
        return False


def _is_locked(lock_path: Path) -> bool:
    with open(lock_path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def remove_read_only(path: Path) -> None:
    """Remove a file or a folder tree whose folders were made read-only (as published)."""
    if path.is_dir() and not path.is_symlink():
        for p in [path, *path.rglob("*")]:
            try:
                if p.is_dir() and not p.is_symlink():
                    p.chmod(0o755)
            except OSError:
                pass
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
