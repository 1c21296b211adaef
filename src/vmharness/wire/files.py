"""Files written whole or not at all, and the SHA-256 of a file: the one way of each.

Readers of a file vmharness writes see the old version or the new one, never half of one: the
new bytes go to a hidden temporary file in the same folder, which then replaces the old file in
one rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, as hex; read in chunks (images are gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` (not yet a file) for the caller to fill: written,
    hard-linked or copied. On leaving the block it replaces `path` in one rename; on an
    error it is removed and `path` is left as it was."""
    path = Path(path)
    # Unique per process and thread: the local engine writes from several threads at once.
    tmp = path.with_name(
        f".{path.name}.{os.getpid()}.{threading.get_ident()}.{time.monotonic_ns()}.tmp"
    )
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: str | bytes, *, mode: int = 0o644) -> Path:
    """Write `data` (text is UTF-8) to `path` whole or not at all; makes missing folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with replacing(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.chmod(tmp, mode)  # whatever the umask took away
    return path
