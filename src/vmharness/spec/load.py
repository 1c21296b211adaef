"""`load_spec`: a spec file, or a folder of them, read (either dialect) and merged into a Spec."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vmharness.errors import SpecError

from . import osg
from .merge import Acc, Decl, merge
from .models import Spec
from .ours import load_platform_map, read_file
from .yamlread import Loc, file_kind


def load_spec(
    path: Path | str,
    platform_map: Path | str | Mapping[str, Any] | None = None,
) -> Spec:
    """Load a spec file, or a folder of `*.yaml` spec files merged into one matrix.

    `platform_map` (a YAML file, or an already loaded mapping) maps platform names to a recipe
    or an image and wins over the spec's own `platform_map`. Unmapped platforms are not an error
    here; call `check_platforms` before running anything.
    """
    path = Path(path)
    if os.path.isdir(path):  # os.path: False, not an error, for too long a name
        files = spec_files(path)
        if not files:
            raise SpecError(
                "the folder holds no *.yaml spec files", file=path, field="platforms", line=None
            )
    elif os.path.exists(path):
        files = [path]
    else:
        raise SpecError("no such file or folder", file=path, hint="give a spec file or folder")

    acc = Acc()
    for f in files:
        read_file(f, acc)
    osg.settle_labels(acc)

    cli_map: dict[str, tuple[Decl, Loc]] = {}
    if platform_map is not None:
        cli_map = load_platform_map(platform_map)
    return merge(path, acc, cli_map)


def spec_files(folder: Path) -> list[Path]:
    """The `*.yaml` / `*.yml` files of a spec folder, in name order (hidden ones left out).

    One that cannot be read as a file (a dangling or looping symlink, a folder, a FIFO) is an
    error: skipping it would silently drop part of the matrix.
    """
    files: list[Path] = []
    for p in sorted(folder.iterdir()):
        if p.suffix not in (".yaml", ".yml") or p.name.startswith("."):
            continue
        try:
            mode = p.stat().st_mode  # follows symlinks
        except OSError as e:
            if e.errno == errno.ELOOP:
                why = "is a symlink loop"
            elif p.is_symlink():
                why = f"is a symlink that points to nothing ({os.readlink(p)})"
            else:
                why = f"cannot be read: {e.strerror or e}"
            raise SpecError(
                f"this spec file of the folder {why}",
                file=p,
                hint="fix or remove the link: every *.yaml file of a spec folder is part of "
                "the spec",
            ) from None
        if not stat.S_ISREG(mode):
            raise SpecError(
                f"not a regular file (it is {file_kind(mode)}), in a spec folder",
                file=p,
                hint="rename or remove it: every *.yaml file of a spec folder is part of the spec",
            )
        files.append(p)
    return files
