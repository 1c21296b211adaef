"""Users' files cannot crash, stall or fill the host: what would only have failed once runs died
(sizes, counts and folders this machine cannot give or copy, a matrix too big to hold, a recipe
that does not load) is refused before anything is made: exit 2, naming file, line and field.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
from conftest import run_cli
from specfiles import SPEC, assert_names, spec_error, write

from vmharness.errors import EXIT_USAGE, SpecError
from vmharness.spec import expand, load_spec
from vmharness.spec.expand import check_host
from vmharness.spec.models import (
    MAX_CPUS,
    MAX_MEMORY_MIB,
    MAX_RUNS,
    MIN_OUTPUT_SIZE_MIB,
)

# -- vm: sizes and counts the host cannot give -----------------------------------------------


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("1M", f"at least {MIN_OUTPUT_SIZE_MIB}M"),
        (str(MIN_OUTPUT_SIZE_MIB - 1), f"at least {MIN_OUTPUT_SIZE_MIB}M"),
        ("1T", "at most"),
    ],
)
def test_output_size_the_disk_maker_would_refuse(tmp_path: Path, value: str, words: str) -> None:
    path = write(tmp_path, "s.yaml", SPEC + f"  output_size: {value}\n")
    err = spec_error(path)
    assert_names(err, path, 8, "vm.output_size")
    assert words in str(err)


@pytest.mark.skipif(not shutil.which("mkfs.fat"), reason="mkfs.fat (dosfstools) is missing")
def test_the_smallest_output_size_is_one_the_disk_maker_makes(tmp_path: Path) -> None:
    from vmharness.images.disks import make_output_disk

    path = write(tmp_path, "s.yaml", SPEC + f"  output_size: {MIN_OUTPUT_SIZE_MIB}M\n")
    assert load_spec(path).vm.output_size_mib == MIN_OUTPUT_SIZE_MIB
    make_output_disk(tmp_path / "out.img", MIN_OUTPUT_SIZE_MIB)  # no error: a real FAT


@pytest.mark.parametrize(
    ("line", "field", "words"),
    [
        (f"  cpus: {MAX_CPUS + 1}\n", "vm.cpus", f"at most {MAX_CPUS}"),
        (f"  memory: {MAX_MEMORY_MIB // 1024 + 1}G\n", "vm.memory", "at most"),
    ],
)
def test_cpus_and_memory_beyond_any_machine(tmp_path: Path, line: str, field: str, words: str):
    text = SPEC.replace("  memory: 512M\n", "") + line
    path = write(tmp_path, "s.yaml", text)
    err = spec_error(path)
    assert_names(err, path, 7, field)
    assert words in str(err)


def test_cpus_and_memory_beyond_this_machine(tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", SPEC.replace("512M", "3G") + "  cpus: 4\n")
    spec = load_spec(path)
    check_host(spec, cpus=4, memory_mib=4096)  # fits
    with pytest.raises(SpecError) as info:
        check_host(spec, cpus=2, memory_mib=4096)
    assert_names(info.value, path, 8, "vm.cpus")
    assert "2 CPUs" in str(info.value)
    with pytest.raises(SpecError) as info:
        check_host(spec, cpus=8, memory_mib=2048)
    assert_names(info.value, path, 7, "vm.memory")


def test_run_refuses_more_cpus_than_this_machine_before_making_anything(tmp_path: Path):
    cpus = (os.cpu_count() or 1) + 1
    path = write(tmp_path, "s.yaml", SPEC + f"  cpus: {min(cpus, MAX_CPUS)}\n")
    if cpus > MAX_CPUS:
        pytest.skip("this machine has more CPUs than any spec may ask for")
    out = tmp_path / "out"
    proc = run_cli("run", path, "--out", out, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"{path.name}:8" in proc.stderr and "vm.cpus" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    # Listing asks nothing of this machine.
    assert run_cli("matrix", path, timeout=60).returncode == 0


# -- matrix size -----------------------------------------------------------------------------


def _matrix(platforms: int, sources: int, sets: int, prefix: str = "p") -> str:
    return (
        f"platforms: [{', '.join(f'{prefix}{i}' for i in range(platforms))}]\n"
        f"sources: [{', '.join(f'{{label: s{i}}}' for i in range(sources))}]\n"
        f"package_sets: [{', '.join(f'{{label: k{i}, packages: []}}' for i in range(sets))}]\n"
    )


def test_a_matrix_beyond_the_limit_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", "test: {command: x}\n" + _matrix(100, 100, 11))
    err = spec_error(path)
    assert_names(err, path, 2, "platforms")
    assert "110000 runs" in str(err) and str(MAX_RUNS) in str(err)


def test_a_folder_whose_union_is_beyond_the_limit(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "test: {command: x}\n" + _matrix(60, 40, 25, "a"))
    write(tmp_path, "b.yaml", _matrix(60, 40, 25, "b"))  # 60,000 other runs
    with pytest.raises(SpecError) as info:
        expand(load_spec(tmp_path))
    assert f"more than {MAX_RUNS} runs" in str(info.value) and info.value.hint


# -- the test suite folder -------------------------------------------------------------------


@pytest.mark.parametrize("suite", ["/", "../../../../../../../../../../../.."])
def test_a_suite_of_the_root_folder(tmp_path: Path, suite: str) -> None:
    text = SPEC.replace("  command: ./run-tests\n", f"  command: ./run-tests\n  suite: {suite}\n")
    path = write(tmp_path, "s.yaml", text)
    err = spec_error(path)
    assert_names(err, path, 6, "test.suite")
    assert "the root folder" in str(err)


def _suite_spec(tmp_path: Path) -> Path:
    (tmp_path / "suite" / "sub").mkdir(parents=True)
    (tmp_path / "suite" / "run-tests").write_text("#!/bin/sh\n")
    text = SPEC.replace("  command: ./run-tests\n", "  command: ./run-tests\n  suite: suite\n")
    return write(tmp_path, "s.yaml", text)


def test_a_suite_holding_a_fifo(tmp_path: Path) -> None:
    path = _suite_spec(tmp_path)
    assert load_spec(path).test.suite == tmp_path / "suite"
    os.mkfifo(tmp_path / "suite" / "sub" / "pipe")
    err = spec_error(path)
    assert_names(err, path, 6, "test.suite")
    assert "sub/pipe" in str(err) and "FIFO" in str(err)


def test_a_suite_holding_a_socket(tmp_path: Path) -> None:
    path = _suite_spec(tmp_path)
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "suite" / "s.sock"))
        err = spec_error(path)
    finally:
        sock.close()
    assert_names(err, path, 6, "test.suite")
    assert "s.sock" in str(err) and "socket" in str(err)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device file needs root")
def test_a_suite_holding_a_device(tmp_path: Path) -> None:
    import stat

    path = _suite_spec(tmp_path)
    os.mknod(tmp_path / "suite" / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    err = spec_error(path)
    assert_names(err, path, 6, "test.suite")
    assert "device" in str(err)


def test_a_suite_of_too_many_files(tmp_path: Path, monkeypatch) -> None:
    from vmharness.spec import ours

    path = _suite_spec(tmp_path)
    for i in range(3):
        (tmp_path / "suite" / "sub" / f"f{i}").write_text("x")
    monkeypatch.setattr(ours, "MAX_SUITE_FILES", 5)  # run-tests, sub/ and 3 files: 5 is fine
    assert load_spec(path).test.suite == tmp_path / "suite"
    (tmp_path / "suite" / "one-more").write_text("x")
    err = spec_error(path)
    assert_names(err, path, 6, "test.suite")
    assert "more than 5 files" in str(err)


def test_a_suite_may_hold_symlinks_even_dangling_ones(tmp_path: Path) -> None:
    """They are copied as links (never followed on the host), so they are no danger."""
    path = _suite_spec(tmp_path)
    (tmp_path / "suite" / "to-dev-null").symlink_to("/dev/null")
    (tmp_path / "suite" / "nowhere").symlink_to("missing")
    assert load_spec(path).test.suite == tmp_path / "suite"


# -- spec folders: .yaml entries that cannot be read are named, not skipped -------------------


@pytest.mark.parametrize("kind", ["dangling", "loop", "self-loop", "folder", "fifo"])
def test_a_spec_folder_entry_that_is_no_file(tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "specs"
    write(folder, "a.yaml", SPEC)
    bad = folder / "b.yaml"
    if kind == "dangling":
        bad.symlink_to(tmp_path / "moved-away.yaml")
    elif kind == "loop":
        bad.symlink_to(folder / "c.yaml")
        (folder / "c.yaml").symlink_to(bad)
    elif kind == "self-loop":
        bad.symlink_to(bad)
    elif kind == "folder":
        bad.mkdir()
    else:
        os.mkfifo(bad)
    err = spec_error(folder)
    assert err.file in (str(bad), str(folder / "c.yaml")), str(err)
    assert err.hint and err.exit_code == EXIT_USAGE
    words = {"dangling": "points to nothing", "loop": "loop", "self-loop": "loop"}
    assert words.get(kind, "not a regular file") in str(err)


# -- recipes: matrix and run load them before anything is made -------------------------------


RECIPE_SPEC = """\
platforms: [{name: mine, recipe: mine.yaml}]
sources: [{label: stable}]
package_sets: [{label: base, packages: []}]
test: {command: "true"}
"""


@pytest.mark.parametrize("command", ["matrix", "run"])
def test_matrix_and_run_check_recipe_files(tmp_path: Path, command: str) -> None:
    spec = write(tmp_path, "s.yaml", RECIPE_SPEC)
    recipe = write(tmp_path, "mine.yaml", "suite: bookworm\nflavour: vanilla\n")
    out = tmp_path / "out"
    args = ["--out", out] if command == "run" else []
    proc = run_cli(command, spec, *args, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{recipe}:2" in proc.stderr and "flavour" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists(), "a run folder was made for a recipe that cannot be read"


# -- what users write is printed as written, never as markup ----------------------------------


def test_labels_and_errors_are_printed_as_written(tmp_path: Path) -> None:
    text = SPEC.replace("{label: base,", "{label: '[bold]x[/] [/]',")
    path = write(tmp_path, "s.yaml", text)
    proc = run_cli("matrix", path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "[bold]x[/] [/]" in proc.stdout
    bad = write(tmp_path, "bad.yaml", SPEC.replace("[debian-12]", "['[/]deb[red]']"))
    proc = run_cli("matrix", bad, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "[/]deb[red]" in proc.stderr


# -- durations and sizes no timer or disk can hold -------------------------------------------


@pytest.mark.parametrize(
    ("line", "field"),
    [
        (f"  wall_timeout: {'9' * 5000}s\n", "vm.wall_timeout"),
        ("  wall_timeout: 400d\n", "vm.wall_timeout"),
        (f"  output_size: {'9' * 400}M\n", "vm.output_size"),
        (f"  memory: {'9' * 5000}\n", "vm.memory"),
    ],
)
def test_absurd_durations_and_sizes(tmp_path: Path, line: str, field: str) -> None:
    path = write(tmp_path, "s.yaml", SPEC.replace("  memory: 512M\n", "") + line)
    err = spec_error(path)
    assert_names(err, path, 7, field)


def test_a_run_line_and_the_live_table_print_labels_and_reasons_as_written() -> None:
    import time

    from rich.console import Console

    from vmharness.engine.local import Progress, result_line
    from vmharness.results.model import RunResult
    from vmharness.spec import PackageSet, Platform, Run, Source, TestSettings, VMSettings

    run = Run(
        "0001", Platform("p"), Source("[/]s"), PackageSet("[bold]k"), TestSettings(), VMSettings()
    )
    console = Console(record=True, width=200, color_system=None)
    console.print(result_line(run, RunResult("0001", "fail", reason="guest said [/red]")))
    progress = Progress(total=1)
    progress.running["0001"] = (run, time.monotonic(), 1)
    console.print(progress.table())
    out = console.export_text()
    assert "[/]s" in out and "[bold]k" in out and "guest said [/red]" in out
