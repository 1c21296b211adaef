"""The `vmharness` command: argument parsing and wiring only; the work is in the modules.

Exit codes: 0 every run passed, 1 some run did not pass, 2 usage or spec error,
3 infrastructure error (no run could be done), 130 interrupted (Ctrl-C), 143 stopped by
SIGTERM; after either, the VMs are stopped and `vmharness resume RUNDIR` finishes the runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import sys
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import __version__
from .errors import (
    EXIT_INFRA,
    EXIT_INTERRUPTED,
    EXIT_NOT_ALL_PASSED,
    EXIT_PASS,
    EXIT_TERMINATED,
    EXIT_USAGE,
    SpecError,
    Terminated,
    UsageError,
    VmharnessError,
)
from .images.cache import DEFAULT_MAX_AGE_S, ImageCache
from .images.recipe import builtin_names, check_recipes, load_recipe
from .report import ReportInput
from .results.model import PASSING
from .rundir import RunFolder, read_previous
from .spec import (
    check_host,
    check_platforms,
    expand,
    json_schema_text,
    load_spec,
    parse_duration,
)
from .vm.snapshots import SnapshotStore
from .wire.codec import encode, read_json, write_json_atomic
from .wire.files import write_atomic

# Piped into a CI log, lines are not folded at 80 columns in the middle of paths and messages.
# No rich markup in anything printed: spec labels, paths, guest test names and error messages
# are text, brackets and all (`test_open[/a]`); our own styles are given as `Text` styles.
console = Console(stderr=False, soft_wrap=not sys.stdout.isatty(), markup=False)
err_console = Console(stderr=True, soft_wrap=not sys.stderr.isatty(), markup=False)
RUNDIR_HELP = "the run folder `vmharness run` or `submit` printed"


def _at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, not {value}")
        return value

    return parse


EPILOG = """exit codes: 0 every run passed, 1 some run did not pass, 2 usage or spec error,
3 infrastructure error (no run could be done), 130 interrupted (Ctrl-C), 143 stopped by
SIGTERM (after either, `vmharness resume RUNDIR` finishes the runs).
environment: VMHARNESS_CACHE (images, snapshots and the package cache, default
~/.cache/vmharness), VMHARNESS_ACCEL (kvm|tcg|auto, default auto: KVM only if a probe VM boots
under it), VMHARNESS_PACKAGE_CACHE_MAX (the package cache's size limit, default 10G)."""


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", type=Path, help="spec YAML file, or a folder of them (merged)")
    p.add_argument(
        "--platform-map",
        type=Path,
        metavar="FILE",
        help="YAML mapping of platform name -> recipe name/file or {image: FILE}",
    )


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--jobs",
        "-j",
        type=_at_least(1),
        metavar="N",
        help="VMs at once (default: as many as cores and memory allow)",
    )
    p.add_argument(
        "--retries",
        type=_at_least(0),
        default=2,
        metavar="N",
        help="automatic retries of infrastructure failures (died); default 2",
    )
    p.add_argument(
        "--boot",
        choices=("snapshot", "kernel", "disk"),
        default="snapshot",
        help="snapshot (default): restore a VM of the run's shape that was booted "
        "once and saved just before its agent reads a run (the fastest; made on "
        "first use, kept in the image cache); kernel: direct kernel boot every "
        "time; disk: boot the image's own bootloader, as HTCondor's VM universe "
        "does",
    )
    p.add_argument(
        "--max-age",
        default="7d",
        metavar="DURATION",
        help="rebuild a cached image older than this (default 7d)",
    )
    p.add_argument("--rebuild", action="store_true", help="rebuild the images first")
    p.add_argument(
        "--package-proxy",
        default="auto",
        metavar="URL|auto|none",
        help="HTTP proxy apt (and dnf, for http:// repositories) in the guests fetches "
        "through. auto (default): vmharness's own "
        "apt-cacher-ng, its cache in the image cache folder (package-cache/), started for the "
        "runs that install packages; none: straight from the mirrors; a URL: that proxy, as "
        "the guest reaches it (the host is 10.0.2.2)",
    )
    p.add_argument(
        "--package-cache-max",
        metavar="SIZE",
        help="size limit of that cache (default $VMHARNESS_PACKAGE_CACHE_MAX, else 10G): when "
        "a run starts the proxy and the cache holds more, the files used least recently go",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results JSON here")
    p.add_argument(
        "--previous",
        type=Path,
        metavar="RUNDIR",
        help="compare with an earlier run folder (new failures, fixed, still failing)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmharness",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run test suites inside throw-away VMs: a matrix of OS platforms x package "
        "sources x package sets, locally with qemu or on an HTCondor pool.",
    )
    parser.add_argument("--version", action="version", version=f"vmharness {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def cmd(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = cmd("run", "run every run of a spec locally with qemu, then write the reports")
    _spec_args(p)
    _run_args(p)
    p.add_argument(
        "--out",
        type=Path,
        metavar="RUNDIR",
        help="run folder to create (default runs/<time>-<spec name>)",
    )
    p.set_defaults(func=cmd_run)

    p = cmd("matrix", "list the runs a spec expands to, without running anything")
    _spec_args(p)
    p.add_argument("--json", action="store_true", help="print the runs as JSON")
    p.set_defaults(func=cmd_matrix)

    p = cmd("schema", "print the JSON Schema of the spec format, for editors that check YAML")
    p.add_argument("--out", type=Path, metavar="FILE", help="write it to FILE instead")
    p.set_defaults(func=cmd_schema)

    p = cmd("resume", "finish a run folder whose vmharness was stopped (no run lost or redone)")
    p.add_argument("rundir", type=Path, help=RUNDIR_HELP)
    _run_args(p)
    p.set_defaults(func=cmd_resume)

    p = cmd("rerun", "run chosen runs of a run folder again, on purpose")
    p.add_argument("rundir", type=Path, help=RUNDIR_HELP)
    p.add_argument("ids", nargs="*", metavar="RUN_ID", help="run ids to rerun (e.g. 0007)")
    p.add_argument("--failed", action="store_true", help="rerun every run that did not pass")
    p.add_argument(
        "--status",
        action="append",
        default=[],
        metavar="STATUS",
        help="rerun runs with this status (repeatable)",
    )
    _run_args(p)
    p.set_defaults(func=cmd_rerun)

    p = cmd("report", "rebuild every report of a run folder from its database and logs")
    p.add_argument("rundir", type=Path, help=RUNDIR_HELP)
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results JSON here")
    p.add_argument("--previous", type=Path, metavar="RUNDIR", help="compare with this run folder")
    p.set_defaults(func=cmd_report)

    p = cmd("hosts", "the execute-host deny-list: bad execute points the pool's DAGs avoid")
    p.add_argument(
        "--hosts-file",
        type=Path,
        metavar="FILE",
        help="the list (default $VMHARNESS_HOSTS_FILE, else hosts.json in the image cache's root)",
    )
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    hsub = p.add_subparsers(dest="hosts_command", metavar="ACTION")
    f = hsub.add_parser(
        "forgive",
        help="remove a host's entry (it was mended): jobs go there again",
        description="Remove HOST's entry from the deny-list: its failures are forgotten and "
        "DAGs submitted from now on send it jobs again.",
    )
    f.add_argument("host", metavar="HOST", help="the host as the pool names it (its Machine)")
    p.set_defaults(func=cmd_hosts)

    p = cmd("image", "build, list and prune cached base images")
    isub = p.add_subparsers(dest="image_command", metavar="ACTION", required=True)
    b = isub.add_parser(
        "build",
        help="build (or reuse) the image of a recipe",
        description="Build the base image of RECIPE (a built-in name such as "
        "debian-12, or a recipe YAML file) unless a fresh one is "
        "cached. Needs root (mmdebstrap).",
    )
    b.add_argument(
        "recipe",
        nargs="?",
        default="debian-12",
        help=f"built-in: {', '.join(builtin_names())}; or a recipe file (default: debian-12)",
    )
    b.add_argument("--rebuild", action="store_true", help="build even if a fresh one is cached")
    b.add_argument(
        "--max-age",
        default="7d",
        metavar="DURATION",
        help="a cached image older than this is rebuilt (default 7d)",
    )
    b.set_defaults(func=cmd_image_build)
    imp = isub.add_parser(
        "import",
        help="make a vmharness image of a bootable qcow2 or raw disk (another distribution)",
        description="Make a vmharness base image of FILE, a bootable qcow2 or raw disk of "
        "any systemd-based Linux (a distribution's cloud image, a Packer build): the agent on "
        "the image's own Python, the fixed hostname and host certificate, the serial console, "
        "SELinux labels. FILE is never written to; the result is cached by FILE's content, "
        "and a spec's `platform: {image: FILE}` finds it there (or imports it on first use). "
        "Needs libguestfs (libguestfs-tools), not root.",
    )
    imp.add_argument("file", type=Path, help="the bootable disk image (qcow2 or raw)")
    imp.add_argument(
        "--name",
        metavar="NAME",
        help="the image's name in the cache and the pool (default: from the file's name)",
    )
    imp.set_defaults(func=cmd_image_import)
    lst = isub.add_parser(
        "list",
        help="list cached images and their warm-boot snapshots",
        description="List cached images, and the warm-boot snapshots made "
        "from each (ids as in a result's `boot` field).",
    )
    lst.set_defaults(func=cmd_image_list)
    pr = isub.add_parser(
        "prune",
        help="remove old images, keeping the newest N per recipe",
        description="Remove old images, crashed-build leftovers, and the "
        "warm-boot snapshots of removed images or unused for a "
        "week.",
    )
    pr.add_argument(
        "--keep",
        type=int,
        default=1,
        metavar="N",
        help="newest images to keep per recipe (default 1)",
    )
    pr.add_argument("--dry-run", action="store_true", help="only show what would go")
    pr.set_defaults(func=cmd_image_prune)
    _condor_parsers(cmd)  # HTCondor backend block, below
    return parser


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM is Ctrl-C: the VMs are stopped cleanly and the runs kept for `resume`. A second
    SIGTERM while that happens is ignored (a SIGKILL still works: lifetime.py)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def _stopped_code(exc: KeyboardInterrupt) -> int:
    return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return int(args.func(args) or 0)
    except VmharnessError as exc:
        err_console.print(Text.assemble(("error:", "bold red"), " ", str(exc)), highlight=False)
        if exc.hint:
            err_console.print(
                Text.assemble(("what to do:", "bold"), " ", exc.hint), highlight=False
            )
        return exc.exit_code
    except KeyboardInterrupt as exc:
        why = "stopped (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        err_console.print(f"{why}; `vmharness resume RUNDIR` finishes a run folder")
        return _stopped_code(exc)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, before)


# -- commands ---------------------------------------------------------------------------------
def _load(args: argparse.Namespace, *, need_images: bool, here: bool = False):
    spec = load_spec(args.spec, platform_map=args.platform_map)
    check_recipes(spec.platforms)
    if need_images:
        check_platforms(spec, set(builtin_names()))
    if here:
        check_host(spec)
    return spec, expand(spec)


def _max_age(args: argparse.Namespace) -> float:
    if getattr(args, "max_age", None) in (None, "7d"):
        return DEFAULT_MAX_AGE_S
    return parse_duration(args.max_age, field="--max-age")


def _previous(args: argparse.Namespace) -> ReportInput | None:
    """--previous, read before anything is run or written (a bad one stops the command)."""
    previous = getattr(args, "previous", None)
    return read_previous(previous) if previous is not None else None


def _finish(folder, args: argparse.Namespace, previous: ReportInput | None = None) -> int:
    from .engine.local import check_can_run

    paths = folder.write_reports(console, previous)
    if getattr(args, "json", None):
        write_atomic(args.json, paths["json"].read_bytes())
    console.print(f"reports: {paths['html']}  {paths['junit']}  {paths['json']}")
    console.print(f"logs:    {folder.path / 'runs'}/<run id>/ (console.log, output/)")
    check_can_run(folder.db.results())
    return EXIT_PASS if folder.all_passed() else EXIT_NOT_ALL_PASSED


def _run_here(folder, args: argparse.Namespace, previous: ReportInput | None) -> int:
    """The pending runs of `folder` on this machine, then its reports."""
    from .engine.local import run_locally

    try:
        run_locally(
            folder,
            ImageCache(),
            console,
            jobs=args.jobs,
            retries=args.retries,
            boot=args.boot,
            max_age_s=_max_age(args),
            rebuild=args.rebuild,
            package_proxy=getattr(args, "package_proxy", "auto"),
            package_cache_max=args.package_cache_max,
        )
    except KeyboardInterrupt as exc:
        why = "stopped (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        err_console.print(
            f"{why}; its VMs were stopped; `vmharness resume {folder.path}` finishes it (no "
            "run is lost or done twice)",
            highlight=False,
        )
        return _stopped_code(exc)
    return _finish(folder, args, previous)


# run, resume, rerun and report hold their run folder (RunFolder exclusive=True) from before
# they read it until they end: a second vmharness on it is refused and told who has it.
def cmd_run(args: argparse.Namespace) -> int:
    from .engine.local import check_package_cache_limit

    spec, runs = _load(args, need_images=True, here=True)
    previous = _previous(args)
    check_package_cache_limit(args.package_proxy, args.package_cache_max, runs)
    with RunFolder.create(spec, runs, args.out, backend="local", exclusive=True) as folder:
        return _run_here(folder, args, previous)


def cmd_resume(args: argparse.Namespace) -> int:
    previous = _previous(args)
    with RunFolder.open(args.rundir, exclusive=True) as folder:
        return _run_here(folder, args, previous)


def cmd_rerun(args: argparse.Namespace) -> int:
    previous = _previous(args)
    with RunFolder.open(args.rundir, exclusive=True) as folder:
        return _rerun(folder, args, previous)


def _rerun(folder: RunFolder, args: argparse.Namespace, previous: ReportInput | None) -> int:
    results = folder.db.results()
    known = set(folder.db.states())
    unknown = [i for i in args.ids if i not in known]
    if unknown:
        raise UsageError(
            f"no run {', '.join(unknown)} in {args.rundir}",
            hint="`vmharness report RUNDIR` lists the runs and their ids",
        )
    chosen = set(args.ids)
    chosen |= {i for i, r in results.items() if args.failed and r.status not in PASSING}
    chosen |= {i for i, r in results.items() if r.status in args.status}
    if not chosen:
        console.print("nothing to rerun (give run ids, --failed or --status)")
        return EXIT_USAGE
    folder.db.reset(sorted(chosen))
    console.print(f"rerunning {len(chosen)} run(s): {', '.join(sorted(chosen)[:20])}")
    return _run_here(folder, args, previous)


def cmd_report(args: argparse.Namespace) -> int:
    previous = _previous(args)
    with RunFolder.open(args.rundir, exclusive=True) as folder:
        return _finish(folder, args, previous)


def cmd_matrix(args: argparse.Namespace) -> int:
    spec, runs = _load(args, need_images=False)
    try:  # listing needs no images; running does: say now what `run` would refuse
        check_platforms(spec, set(builtin_names()))
    except SpecError as exc:
        err_console.print(
            Text.assemble(("note:", "yellow"), f" `vmharness run` would stop here: {exc}"),
            highlight=False,
        )
    if args.json:
        payload = to_json_runs(runs)
        print(json.dumps(payload, indent=2))
        return EXIT_PASS
    table = Table(title=f"{len(runs)} runs")
    for col in ("id", "platform", "source", "package set", "packages"):
        table.add_column(col)
    for run in runs:
        pk = " ".join(run.package_set.packages)
        table.add_row(  # labels as written: a "[" in one is no markup
            run.id,
            Text(run.platform.name),
            Text(run.source.label),
            Text(run.package_set.label),
            Text(pk if len(pk) < 60 else pk[:57] + "..."),
        )
    console.print(table)
    return EXIT_PASS


def cmd_schema(args: argparse.Namespace) -> int:
    text = json_schema_text()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return EXIT_PASS


def to_json_runs(runs) -> dict:
    return {"count": len(runs), "runs": [encode(r) for r in runs]}


def cmd_image_build(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe)
    cache = ImageCache()
    # A status line is always read as markup by rich: Text keeps the build's messages as text.
    with console.status(Text(f"{recipe.name}: looking up the cache")) as status:
        image = cache.get(
            recipe,
            max_age_s=_max_age(args),
            rebuild=args.rebuild,
            progress=lambda m: status.update(Text(f"{recipe.name}: {m}")),
        )
    console.print(
        f"{image.recipe}: {image.folder} ({image.size_bytes / 1e6:.0f} MB, "
        f"kernel {image.kernel_version}, sha256 {image.sha256[:16]})"
    )
    return EXIT_PASS


def cmd_image_import(args: argparse.Namespace) -> int:
    from .engine.local import import_image

    cache = ImageCache()
    t0 = time.monotonic()
    image = import_image(args.file.name, args.file, cache, console, name=args.name)
    meta = read_json(image.folder / "image.json", limit=1 << 20)
    console.print(
        Text(
            f"{image.recipe}: {image.folder}\n"
            f"  from {image.origin}\n"
            f"  agent on {meta.get('python')} (Python {meta.get('python_version')}), "
            f"kernel {image.kernel_version}, SELinux {meta.get('selinux') or 'not used'}\n"
            f"  direct boot: {image.cmdline}\n"
            + "".join(f"  {note}\n" for note in meta.get("notes", []))
            + f"  use it in a spec: platforms: [{{name: NAME, image: {args.file}}}] "
            f"({time.monotonic() - t0:.0f}s)"
        ),
        highlight=False,
    )
    return EXIT_PASS


def cmd_hosts(args: argparse.Namespace) -> int:
    from .hosts import DenyList
    from .wire.codec import dumps

    path = args.hosts_file or None
    if getattr(args, "hosts_command", None) == "forgive":
        with DenyList.locked(path) as d:
            if not d.forgive(args.host):
                known = ", ".join(e.host for e in d.entries()) or "none"
                raise UsageError(
                    f"{args.host} is not on the deny-list {d.path} (hosts on it: {known})",
                    hint="`vmharness hosts` lists them, as the pool names them (Machine)",
                )
        console.print(f"forgiven: {args.host} (removed from {d.path})")
        return EXIT_PASS
    d = DenyList.read(path)
    now = time.time()
    if args.json:
        print(dumps({"file": str(d.path), "hosts": [encode(e) for e in d.entries()]}))
        return EXIT_PASS
    if not d.entries():
        console.print(f"no execute host on the deny-list ({d.path})")
        return EXIT_PASS
    table = Table(title=f"execute hosts in {d.path} (deny after {d.policy.describe()})")
    for col in ("host", "state", "until", "reason", "runs that died there"):
        table.add_column(col, overflow="fold")
    for e in d.entries():
        state = e.state(now)
        until = (
            dt.datetime.fromtimestamp(e.expires).strftime("%Y-%m-%d %H:%M")
            if e.expires and state == "denied"
            else "-"
        )
        if state == "trial":
            state = "trial (expired: its next run decides)"
        elif state == "ok":
            state = f"ok ({e.streak()} failure(s) in a row)"
        runs = ", ".join(f"{Path(f.run_dir).name}/{f.run}" for f in e.failures[-10:])
        table.add_row(Text(e.host), state, until, Text(e.reason or "-"), Text(runs))
    console.print(table)
    return EXIT_PASS


def cmd_image_list(args: argparse.Namespace) -> int:
    cache = ImageCache()
    images = cache.list()
    snapshots = SnapshotStore(cache.root / "snapshots").by_image()
    table = Table(title=f"images in {cache.images_dir}")
    columns = ("recipe", "source", "folder", "size", "age", "hostname", "content name")
    for col in (*columns, "snapshots"):
        table.add_column(col, overflow="fold")  # names are long, and all of them matter
    for image in images:
        snaps = snapshots.get(image.folder.name, [])
        size = sum(s.size_bytes() for s in snaps)
        table.add_row(
            image.recipe,
            Text(f"imported from {image.origin}" if image.origin else "built from its recipe"),
            image.folder.name,
            f"{image.size_bytes / 1e6:.0f} MB",
            f"{image.age_s() / 3600:.1f} h",
            image.hostname,
            image.content_name,
            f"{len(snaps)} ({size / 1e6:.0f} MB): " + " ".join(s.folder.name for s in snaps)
            if snaps
            else "-",
        )
    console.print(
        table
        if images
        else "no cached images (build one: vmharness image build, or vmharness image import FILE)"
    )
    return EXIT_PASS


def cmd_image_prune(args: argparse.Namespace) -> int:
    if args.keep < 0:
        raise UsageError("--keep must be 0 or more")
    cache = ImageCache()
    removed = cache.prune(keep=args.keep, dry_run=args.dry_run)
    # A snapshot is only as good as its image: those of removed images go too.
    kept = {i.folder.name for i in cache.list()} - {p.name for p in removed}
    removed += SnapshotStore(cache.root / "snapshots").prune(kept, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for path in removed:
        console.print(f"{verb} {path}")
    console.print(f"{verb} {len(removed)} item(s)")
    return EXIT_PASS


# == HTCondor backend (issue 4): submit, status, run-one, dag-node ============================
# Wiring only; the work is in condor/ (submit.py, status.py, the DAG's nodes.py and the execute
# side's execute.py). See docs/condor.md.
def _condor_parsers(cmd) -> None:
    p = cmd(
        "submit", "submit every run of a spec to an HTCondor pool as a DAG (see docs/condor.md)"
    )
    _spec_args(p)
    p.add_argument(
        "--pool",
        nargs="?",
        const="",
        default="",
        metavar="ADDRESS",
        help="collector of the pool to submit to (default: the local schedd)",
    )
    p.add_argument(
        "--style",
        choices=("vm", "qemu"),
        default="vm",
        help="vm: VM universe jobs (default); qemu: vanilla jobs that boot qemu "
        "with `vmharness run-one`, for execute points without VM universe",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="RUNDIR",
        help="run folder to create (default runs/<time>-<spec name>); the pool's "
        "account must be able to reach and write it",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results JSON here")
    p.add_argument(
        "--boot",
        choices=("kernel", "disk"),
        default="kernel",
        help="--style qemu: direct kernel boot (default) or the image's own loader",
    )
    p.add_argument(
        "--image-delivery",
        choices=("transfer", "shared", "url"),
        default="transfer",
        help="how base images reach execute points: HTCondor file transfer "
        "(default), a shared filesystem (--image-store on it), or a URL",
    )
    p.add_argument(
        "--image-store",
        type=Path,
        metavar="DIR",
        help="folder for base images under content-addressed names (default RUNDIR/images)",
    )
    p.add_argument(
        "--image-url",
        metavar="URL",
        help="with --image-delivery url: where the image store is published",
    )
    p.add_argument(
        "--retries",
        type=_at_least(0),
        default=2,
        metavar="N",
        help="DAGMan retries of a run that died (infrastructure); default 2",
    )
    p.add_argument(
        "--held-max",
        default="30m",
        metavar="DURATION",
        help="remove a job held this long; its run dies with the hold reason (default 30m)",
    )
    p.add_argument(
        "--queue-max",
        default="12h",
        metavar="DURATION",
        help="remove any job in the queue this long (default 12h)",
    )
    p.add_argument(
        "--requirements",
        metavar="EXPR",
        help="extra job requirements (ClassAd); bad hosts are avoided by the deny-list",
    )
    p.add_argument(
        "--hosts-file",
        type=Path,
        metavar="FILE",
        help="the execute-host deny-list the DAG keeps and follows (default "
        "$VMHARNESS_HOSTS_FILE, else hosts.json in the image cache's root; see `vmharness hosts`)",
    )
    p.add_argument(
        "--deny-policy",
        metavar="RULES",
        help="when a host is denied: after=N (infrastructure failures in a row, default 2), "
        "window=N,rate=R (a share of the last N runs), expiry=DURATION (default 24h); "
        "default $VMHARNESS_DENY",
    )
    p.add_argument(
        "--no-deny-list",
        action="store_true",
        help="neither count failures against execute hosts nor avoid any",
    )
    p.add_argument(
        "--prep-maxjobs",
        type=int,
        default=20,
        metavar="N",
        help="disk-making nodes at once on the submit host (default 20)",
    )
    p.add_argument(
        "--node-python",
        metavar="PATH",
        help="Python with vmharness for the DAG's nodes on the submit side "
        "(default $VMHARNESS_POOL_PYTHON or this one)",
    )
    p.add_argument(
        "--job-python",
        metavar="PATH",
        help="--style qemu: Python with vmharness on execute points (default as --node-python)",
    )
    p.add_argument(
        "--max-age",
        default="7d",
        metavar="DURATION",
        help="rebuild a cached image older than this (default 7d)",
    )
    p.add_argument("--rebuild", action="store_true", help="rebuild the images first")
    p.add_argument(
        "--package-proxy",
        metavar="URL",
        help="a caching HTTP proxy (a site's apt-cacher-ng or squid) apt in every job's guest "
        "fetches through, as the guest reaches it; unreachable: the guest goes to the mirrors "
        "directly (see README, 'Package cache')",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="stay until the DAG is done, then show the reports (exit as `run`)",
    )
    p.set_defaults(func=cmd_submit)

    p = cmd(
        "resubmit",
        "run again on the pool the runs of a finished DAG that died (DAGMan's rescue DAG)",
    )
    p.add_argument("rundir", type=Path, help=RUNDIR_HELP)
    p.add_argument(
        "--pool",
        nargs="?",
        const="",
        default="",
        metavar="ADDRESS",
        help="collector of the pool to submit to (default: the local schedd)",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="with --wait: the results JSON")
    p.add_argument(
        "--wait",
        action="store_true",
        help="stay until the DAG is done, then show the reports (exit as `run`)",
    )
    p.set_defaults(func=cmd_resubmit)

    p = cmd("status", "progress of a submitted run folder: runs, jobs, held jobs and why")
    p.add_argument("rundir", type=Path, help=RUNDIR_HELP)
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the status as JSON")
    p.set_defaults(func=cmd_status)

    p = cmd(
        "run-one",
        "boot one prepared VM from its job description (what --style qemu jobs "
        "run on execute points; see docs/condor.md)",
    )
    p.add_argument("job", type=Path, help="job.json written by the DAG's prep node")
    p.set_defaults(func=cmd_run_one)

    p = cmd("dag-node", "(internal) a step of a submitted DAG: prep, pre, post or final")
    nsub = p.add_subparsers(dest="node_command", metavar="STEP", required=True)
    n = nsub.add_parser("prep", help="make one run's disks and job description")
    n.add_argument("rundir", type=Path)
    n.add_argument("run_id")
    n.set_defaults(func=cmd_dag_node)
    n = nsub.add_parser("pre", help="fresh disks for a retried VM node (PRE script)")
    n.add_argument("rundir", type=Path)
    n.add_argument("node", help="DAG node name ($JOB)")
    n.set_defaults(func=cmd_dag_node)
    n = nsub.add_parser("post", help="decide and record one attempt (POST script)")
    n.add_argument("rundir", type=Path)
    n.add_argument("node", help="DAG node name ($JOB)")
    n.add_argument("retry", type=int, help="$RETRY")
    n.add_argument("max_retries", type=int, help="$MAX_RETRIES")
    n.add_argument("job_id", nargs="?", default="", help="$JOBID")
    n.set_defaults(func=cmd_dag_node)
    n = nsub.add_parser("final", help="write the reports (FINAL node)")
    n.add_argument("rundir", type=Path)
    n.set_defaults(func=cmd_dag_node)


def cmd_submit(args: argparse.Namespace) -> int:
    from .condor import submit as condor
    from .engine.local import images_for
    from .report import to_json
    from .rundir import RunFolder

    opts = condor.SubmitOptions(
        style=args.style,
        pool=args.pool or None,
        boot=args.boot,
        delivery=args.image_delivery,
        image_store=args.image_store,
        image_url=args.image_url,
        retries=args.retries,
        prep_maxjobs=args.prep_maxjobs,
        requirements=args.requirements,
        held_max_s=parse_duration(args.held_max, field="--held-max"),
        queue_max_s=parse_duration(args.queue_max, field="--queue-max"),
        node_python=args.node_python or "",
        job_python=args.job_python or "",
        package_proxy=args.package_proxy or None,
        hosts_file=args.hosts_file,
        deny_policy=args.deny_policy,
        deny=not args.no_deny_list,
    )
    spec, runs = _load(args, need_images=True)
    schedd = condor.connect(opts.pool)
    warning = None
    if opts.style == "vm":
        slots = condor.vm_slots(opts.pool)
        warning = condor.vm_universe_warning(opts.pool, slots)
        if opts.vm_helper is None:  # vmharness's helper there: console.log comes back
            opts.vm_helper = bool(slots and slots[1])
    if warning:
        err_console.print(Text.assemble(("warning:", "bold yellow"), " ", warning), highlight=False)
    folder = RunFolder.create(spec, runs, args.out, backend="condor")
    cache = ImageCache()
    images = images_for(runs, cache, console, max_age_s=_max_age(args), rebuild=args.rebuild)
    done = condor.submit(folder, runs, images, opts, schedd, condor.cache_content_names(cache))
    for note in done.notes:
        err_console.print(Text.assemble(("warning:", "bold yellow"), " ", note), highlight=False)
    console.print(
        f"submitted {done.runs} run(s) as DAG cluster {done.cluster} "
        f"(--style {opts.style}) in {sum(done.seconds.values()):.1f}s"
    )
    console.print(
        Text.assemble("run folder: ", (str(done.run_dir), "bold"), f"  DAG: {done.dag_file}")
    )
    console.print(f"follow it:  vmharness status {done.run_dir}")
    about = {"cluster": done.cluster, "dag": str(done.dag_file), "style": opts.style}

    def write_json(payload: dict) -> None:
        write_json_atomic(args.json, {**payload, "condor": about})

    if args.json:
        write_json(to_json(folder.report_input()))
    if not args.wait:
        return EXIT_PASS
    _wait_for_dag(folder)
    code = _finish(folder, args)
    if args.json:
        write_json(read_json(args.json))
    return code


def cmd_resubmit(args: argparse.Namespace) -> int:
    from .condor import submit as condor
    from .rundir import RunFolder

    folder = RunFolder.open(args.rundir)
    schedd = condor.connect(args.pool or None)
    cluster = condor.resubmit(folder, schedd)
    console.print(f"resubmitted {folder.path} as DAG cluster {cluster} (its rescue DAG)")
    if not args.wait:
        return EXIT_PASS
    _wait_for_dag(folder)
    return _finish(folder, args)


def _wait_for_dag(folder) -> None:
    from .condor import status

    try:
        status.wait(folder, say=lambda line: console.print(line, highlight=False))
    except KeyboardInterrupt:
        err_console.print(f"stopped waiting; the DAG goes on: vmharness status {folder.path}")
        raise SystemExit(130) from None


def cmd_status(args: argparse.Namespace) -> int:
    import datetime as dt

    from .condor import status
    from .rundir import RunFolder

    folder = RunFolder.open(args.rundir)
    if folder.db.meta().get("backend") != "condor":
        raise UsageError(
            f"{args.rundir} was not submitted to a pool",
            hint="`vmharness report RUNDIR` shows a local run folder",
        )
    st = status.status(folder)
    console.print(status.progress_line(st), highlight=False)
    for layer, counts in sorted(st.jobs.items()):
        console.print(
            f"  {layer} jobs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
            highlight=False,
        )
    if st.held:
        table = Table(title=f"{len(st.held)} held job(s)")
        for col in ("run", "job", "held since", "hold reason"):
            table.add_column(col)
        for h in st.held:
            since = dt.datetime.fromtimestamp(h.since).strftime("%H:%M:%S")
            table.add_row(h.run, h.job, since, h.reason)
        console.print(table)
    for run_id, why in st.removed:
        console.print(f"  removed: run {run_id}: {why}", highlight=False)
    for node, why in st.failed:
        console.print(f"  failed: node {node}: {why}", highlight=False)
    if args.json:
        write_json_atomic(args.json, st.as_dict())
    return EXIT_PASS


def cmd_run_one(args: argparse.Namespace) -> int:
    from .condor.execute import run_one

    return run_one(args.job, say=lambda m: err_console.print(m, highlight=False))


def cmd_dag_node(args: argparse.Namespace) -> int:
    from .condor import nodes as condor_node

    if args.node_command == "prep":
        return condor_node.node_prep(args.rundir, args.run_id)
    if args.node_command == "pre":
        return condor_node.node_pre(args.rundir, args.node)
    if args.node_command == "post":
        return condor_node.node_post(
            args.rundir, args.node, args.retry, args.max_retries, args.job_id
        )
    return condor_node.node_final(args.rundir)


# == end of the HTCondor backend block ==========================================================


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "EXIT_INFRA", "EXIT_USAGE"]
