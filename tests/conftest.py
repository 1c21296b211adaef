"""Shared fixtures.

CI runs on 2 cores under TCG within 90 minutes, so the expensive things happen once:
- `base_image` (session): the debian-12 image from the ordinary cache (`ImageCache()`, which
  honours VMHARNESS_CACHE), built there only if missing, so `make demo`'s image is reused and
  every VM test shares it. Building takes one to two minutes.
- Tests that boot VMs are marked `@pytest.mark.vm` and are skipped (not failed) where they cannot
  run: not root, or qemu / mmdebstrap missing. They run with VMHARNESS_ACCEL unset (auto), so
  the accelerator probe is exercised as a user would meet it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SHARED = REPO.parent / "shared"  # peer data; absent in a user's fresh clone
VM_TOOLS = ("qemu-system-x86_64", "qemu-img", "mmdebstrap")


def vm_skip_reason() -> str | None:
    """Why VM tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "VM tests need root (the image build uses mmdebstrap --mode=root)"
    missing = [t for t in VM_TOOLS if not shutil.which(t)]
    if missing:
        return (
            f"VM tests need {', '.join(missing)} (sudo apt-get install qemu-system-x86 "
            "qemu-utils mmdebstrap, or `make setup`)"
        )
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = vm_skip_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.get_closest_marker("vm"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _accelerator_auto(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """VM tests pick the accelerator as a user's run would (auto: KVM only if a probe boots)."""
    if request.node.get_closest_marker("vm"):
        monkeypatch.delenv("VMHARNESS_ACCEL", raising=False)


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a `vmharness` subprocess: auto accelerator, wide plain output."""
    env = {k: v for k, v in os.environ.items() if k != "VMHARNESS_ACCEL"}
    env.update(COLUMNS="200", NO_COLOR="1", TERM="dumb", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def vmharness_argv(*args: str | Path) -> list[str]:
    """The console script beside this Python (the venv's), else `python -m vmharness.cli`."""
    script = Path(sys.executable).parent / "vmharness"
    base = [str(script)] if script.is_file() else [sys.executable, "-m", "vmharness.cli"]
    return base + [str(a) for a in args]


def run_cli(
    *args: str | Path, timeout: float = 120, cwd: Path | None = None, **popen: object
) -> subprocess.CompletedProcess[str]:
    """Run `vmharness ARGS` to the end; the output is shown in the test report on failure."""
    t0 = time.monotonic()
    proc = subprocess.run(
        vmharness_argv(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
        cwd=cwd or REPO,
        **popen,
    )
    print(
        f"$ vmharness {' '.join(map(str, args))}   -> exit {proc.returncode} "
        f"in {time.monotonic() - t0:.1f}s"
    )
    print(proc.stdout[-6000:])
    print(proc.stderr[-4000:], file=sys.stderr)
    return proc


@pytest.fixture(scope="session")
def base_image():
    """The debian-12 base image from the ordinary cache, built once if missing."""
    reason = vm_skip_reason()
    if reason:
        pytest.skip(reason)
    from vmharness.images.cache import ImageCache
    from vmharness.images.recipe import load_recipe

    cache = ImageCache()  # default root: VMHARNESS_CACHE or ~/.cache/vmharness
    recipe = load_recipe("debian-12")
    t0 = time.monotonic()
    image = cache.get(recipe, progress=lambda m: print(f"[image] {m}", flush=True))
    print(f"base image {image.folder} ready in {time.monotonic() - t0:.1f}s")
    # Probe the accelerator once, as `vmharness run` would (the result is cached for a day),
    # so that vmharness processes started together by a test do not all probe at once.
    from vmharness.vm import accel as local

    os.environ.pop(local.ACCEL_ENV, None)
    local.choose_accelerator(image.kernel, cache.root, say=lambda m: print(m, flush=True))
    return image


@pytest.fixture(scope="session")
def standin_image() -> Path:
    """A Debian system vmharness did not build (tests/standin_image.py), as a distribution's
    cloud image would be: made once, kept in the image cache folder (test-inputs/)."""
    reason = vm_skip_reason()
    if reason:
        pytest.skip(reason)
    if not shutil.which("guestfish"):
        pytest.skip("importing needs libguestfs (sudo apt-get install libguestfs-tools)")
    from standin_image import debian_standin

    from vmharness.images.cache import ImageCache
    from vmharness.images.recipe import load_recipe

    t0 = time.monotonic()
    path = debian_standin(
        ImageCache().root, load_recipe("debian-12").mirror, say=lambda m: print(m, flush=True)
    )
    print(f"stand-in image {path} ready in {time.monotonic() - t0:.1f}s")
    return path


def spec_text(
    command: str,
    *,
    timeout: str = "2m",
    package_sets: list[str] | None = None,
    wall_timeout: str | None = None,
    memory: str = "512M",
    output_size: str | None = None,
    debug: bool = False,
    fmt: str = "exit-code",
    extra: str = "",
) -> str:
    """A spec for debian-12, no network, one run per package-set label (all without packages)."""
    labels = package_sets or ["base system"]
    sets = "".join(f"  - label: {label}\n    packages: []\n" for label in labels)
    vm = [f"  memory: {memory}", "  network: none"]
    if wall_timeout:
        vm.append(f"  wall_timeout: {wall_timeout}")
    if output_size:
        vm.append(f"  output_size: {output_size}")
    if debug:
        vm.append("  debug: true")
    body = textwrap.indent(command.strip("\n"), "    ")
    return (
        "platforms: [debian-12]\n"
        "sources:\n  - label: image packages\n    repos: [main]\n"
        f"package_sets:\n{sets}"
        f"test:\n  command: |\n{body}\n  timeout: {timeout}\n  format: {fmt}\n"
        "vm:\n" + "\n".join(vm) + "\n" + extra
    )


@pytest.fixture
def make_spec(tmp_path: Path) -> Callable[..., Path]:
    """make_spec(command, name="spec.yaml", **spec_text options) -> the spec file's path."""

    def _make(command: str, name: str = "spec.yaml", **options: object) -> Path:
        path = tmp_path / name
        path.write_text(spec_text(command, **options))  # type: ignore[arg-type]
        return path

    return _make


def qemu_pids_under(folder: Path) -> list[int]:
    """qemu processes whose command line names a path under `folder` (its console log, disks).

    A test's run folders are unique, so this finds exactly the VMs that test started, and never
    another user's or another test's VM (no broad `pkill -f`).
    """
    needle = str(folder).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and b"qemu-system" in argv[0] and any(needle in a for a in argv):
            pids.append(int(entry.name))
    return pids


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def no_vm_left_behind(tmp_path: Path) -> Iterator[None]:
    """After the test, no qemu of this test's run folders is still running (killed if so)."""
    yield
    left = qemu_pids_under(tmp_path)
    kill_pids(left)
    assert not left, f"qemu processes left running after the test: {left}"


# -- the real HTCondor pool ---------------------------------------------------------------------
POOL_SCRIPT = REPO / "scripts" / "condor-pool"
POOL_UNAVAILABLE = 4  # scripts/condor-pool's exit code for "cannot be made here"


def pool_script(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(POOL_SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="session")
def condor_pool() -> Iterator[dict[str, str]]:
    """The single-machine pool's client environment (CONDOR_CONFIG, VMHARNESS_POOL_*), up for
    the whole session, shared by every pool test; taken down afterwards (leaving no mount
    behind) only if this fixture started it. Skips when not root or when the pool cannot be
    made here (the script exits 4)."""
    htcondor = pytest.importorskip("htcondor2", reason="the htcondor PyPI bindings are missing")
    if os.geteuid() != 0:
        pytest.skip("the local HTCondor pool needs root (mounts, chroot, daemons)")
    started = False
    if pool_script("status").returncode != 0:
        t0 = time.monotonic()
        up = pool_script("up", timeout=900)
        if up.returncode == POOL_UNAVAILABLE:
            pytest.skip(f"no HTCondor pool can be made here: {up.stderr.strip()[-400:]}")
        assert up.returncode == 0, f"scripts/condor-pool up failed:\n{up.stderr}"
        started = True
        print(
            f"\n[condor-pool figure] up (root build included if it was not cached): "
            f"{time.monotonic() - t0:.2f} s",
            file=sys.stderr,
        )
        for line in up.stderr.splitlines():
            if "pool root built in" in line or "pool up:" in line:
                print(f"[condor-pool] {line}", file=sys.stderr)
    env = {}
    for line in pool_script("env").stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    assert Path(env["CONDOR_CONFIG"]).is_file(), env
    # The pool keeps its deny-list in a folder of its account's; the tests keep their own list
    # (a fresh one each session), so that one test's dead runs never deny the host to the next.
    hosts_dir = Path(env["VMHARNESS_HOSTS_FILE"]).parent
    assert hosts_dir.stat().st_uid == pwd.getpwnam(env["VMHARNESS_POOL_USER"]).pw_uid, env
    env["VMHARNESS_HOSTS_FILE"] = f"/tmp/vmh-test-hosts-{os.getpid()}-{time.time_ns()}/hosts.json"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        # The bindings read their configuration at import: re-read it now CONDOR_CONFIG is set.
        htcondor.reload_config()
        yield env
    htcondor.reload_config()
    if started:
        down = pool_script("down", timeout=180)
        assert down.returncode == 0, f"scripts/condor-pool down failed:\n{down.stderr}"
        # The root may be shared with a pool on another port (its mounts stay): ours must go.
        root = os.environ.get("VMHARNESS_POOL_ROOT", "/var/cache/vmharness/condor-root-trixie")
        state = os.path.realpath(env.get("VMHARNESS_POOL_DIR", "/var/tmp/vmharness-pool"))
        with open("/proc/self/mountinfo") as mounts:
            left = [
                line.split()[4]
                for line in mounts
                if line.split()[4].startswith(f"{os.path.realpath(root)}{state}")
            ]
        assert not left, f"mounts left after down: {left}"
