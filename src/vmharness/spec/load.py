"""`load_spec`: a spec file, or a folder of them, read (either dialect) and merged into a Spec."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vmharness.errors import SpecError

from . import osg
from .merge import Acc, Decl, merge
from .models import Spec
from .ours import load_platform_map, read_file
from .yamlread import Loc


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
    if path.is_dir():
        files = sorted(
            p
            for p in path.iterdir()
            if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()
        )
        if not files:
            raise SpecError(
                "the folder holds no *.yaml spec files", file=path, field="platforms", line=None
            )
    elif path.exists():
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
