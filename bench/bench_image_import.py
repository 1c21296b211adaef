#!/usr/bin/env python3
"""Time `vmharness image import` of one disk image, and a trivial run (`true`) on the result
booted each way (direct kernel boot with the image's own kernel, and its own bootloader).

Imports into a fresh, private cache every time (so the import really happens), prints the whole
import, its slowest libguestfs steps, and for each boot way the boot (to agent start) and the
run. Says the accelerator and the machine's load, since both change the figures.

    sudo .venv/bin/python bench/bench_image_import.py [FILE]

FILE defaults to the tests' Debian stand-in (tests/standin_image.py), made first if missing.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench_trivial_run import one

from vmharness.engine.attempt import ImageRef
from vmharness.images.cache import ImageCache
from vmharness.images.recipe import load_recipe
from vmharness.vm.accel import choose_accelerator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", nargs="?", type=Path)
    args = ap.parse_args()
    shared = ImageCache()
    if args.file is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from standin_image import debian_standin

        args.file = debian_standin(shared.root, load_recipe("debian-12").mirror)
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        cache = ImageCache(Path(tmp) / "cache")
        if (shared.ca_dir / "ca.pem").is_file():
            shutil.copytree(shared.ca_dir, cache.ca_dir)
        probe = next((i.kernel for i in shared.list() if i.kernel.is_file()), None)
        accel = choose_accelerator(probe, shared.root, say=print)
        load = os.getloadavg()[0]
        t0 = time.monotonic()
        image = cache.import_image(args.file, accel=accel, progress=lambda m: print(f"  {m}"))
        took = time.monotonic() - t0
        print(
            f"\nimport of {args.file.name} ({args.file.stat().st_size / 1e6:.0f} MB): "
            f"{took:.1f} s, accelerator {accel}, load {load:.1f} at the start"
        )
        steps = []
        for line in (image.folder / "guestfish.log").read_text().splitlines():
            m = re.match(r"^\$ (\S+).*-> \d+ \(([\d.]+)s\)$", line)
            if m:
                steps.append((float(m.group(2)), m.group(1)))
        print(
            f"  {len(steps)} libguestfs calls, {sum(s for s, _ in steps):.1f} s; slowest: "
            + ", ".join(f"{name} {s:.1f} s" for s, name in sorted(steps, reverse=True)[:5])
        )
        ref = ImageRef.from_cache(image)
        for i, boot in enumerate(("kernel", "disk"), start=1):
            row = one(ref, accel, Path(tmp) / boot, boot, i, 1, Path(tmp) / "snapshots")
            print(
                f"trivial run, {boot:6}: "
                + ", ".join(f"{k} {v:.1f} s" for k, v in row.items())
                + f" (load {os.getloadavg()[0]:.1f})"
            )


if __name__ == "__main__":
    main()
