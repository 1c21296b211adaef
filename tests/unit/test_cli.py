"""The `vmharness` command line: help, exit codes, clear errors without tracebacks (no VM)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from conftest import EXAMPLES, SHARED, run_cli

from vmharness.cli import build_parser, main

OSG_PARAMS = SHARED / "peer-data" / "vm-test-runs" / "parameters.d"


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """Every (sub)command path of the parser, e.g. ("image", "build")."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _commands(sub, (*prefix, name))


COMMANDS = sorted(set(_commands(build_parser())))


def test_commands_are_there() -> None:
    names = {c[0] for c in COMMANDS}
    assert {"run", "matrix", "resume", "rerun", "report", "image"} <= names
    assert {("image", "build"), ("image", "list"), ("image", "prune")} <= set(COMMANDS)


def test_help_exits_0(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "exit codes" in out
    for name in {c[0] for c in COMMANDS}:
        assert name in out


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_every_command_has_help(command: tuple[str, ...], capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: vmharness " + " ".join(command))
    assert len(out.splitlines()) > 3


def test_console_script_help_and_version() -> None:
    proc = run_cli("--help", timeout=60)
    assert proc.returncode == 0 and "usage: vmharness" in proc.stdout
    proc = run_cli("--version", timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("vmharness ")


def test_no_command_is_a_usage_error() -> None:
    proc = run_cli(timeout=60)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr


# -- spec errors: exit 2, file:line and field, no traceback ----------------------------------
BAD_SPECS = {
    "syntax": (
        "platforms: [debian-12]\nsources:\n  - label: a\n    repos: [main\npackage_sets: []\n",
        None,
        None,
    ),
    "unknown key": (
        "platforms: [debian-12]\nsources: [{label: a, repos: [main]}]\n"
        "package_sets: [{label: p, packages: []}]\ntest:\n  command: 'true'\n"
        "  timout: 5m\n",
        6,
        "timout",
    ),
    "wrong type": (
        "platforms: [debian-12]\nsources: [{label: a, repos: [main]}]\n"
        "package_sets: [{label: p, packages: []}]\ntest:\n  command: 'true'\n"
        "vm:\n  cpus: many\n",
        7,
        "cpus",
    ),
}


def _assert_clear_error(proc, path: Path, line: int | None, field: str | None) -> None:
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr
    assert "Traceback" not in err and "Traceback" not in proc.stdout
    assert str(path) in err or path.name in err
    if line is not None:
        assert f"{path.name}:{line}" in err, err
    else:
        assert f"{path.name}:" in err, err  # some line, wherever the parser noticed it
    if field is not None:
        assert field in err, err


@pytest.mark.parametrize("kind", sorted(BAD_SPECS))
@pytest.mark.parametrize("command", ["matrix", "run"])
def test_bad_spec_exit_2_names_file_line_field(tmp_path: Path, kind: str, command: str) -> None:
    text, line, field = BAD_SPECS[kind]
    path = tmp_path / f"bad-{kind.replace(' ', '-')}.yaml"
    path.write_text(text)
    args = [command, path] + (["--out", tmp_path / "out"] if command == "run" else [])
    proc = run_cli(*args, timeout=60)
    _assert_clear_error(proc, path, line, field)
    if kind == "syntax":
        assert "sources" in proc.stderr  # the section the syntax error is in
    assert not (tmp_path / "out" / "state.sqlite").exists(), "a run folder was made anyway"


@pytest.mark.parametrize(
    "text,line,field",
    [("suite: bookworm\nflavour: x\n", 2, "flavour"), ("packages: curl\n", 1, "packages")],
)
def test_bad_recipe_exit_2(tmp_path: Path, text: str, line: int, field: str) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    proc = run_cli("image", "build", path, timeout=60)
    _assert_clear_error(proc, path, line, field)


def test_missing_spec_file_exit_2(tmp_path: Path) -> None:
    proc = run_cli("matrix", tmp_path / "nope.yaml", timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


# -- matrix ----------------------------------------------------------------------------------
def test_matrix_lists_runs() -> None:
    proc = run_cli("matrix", EXAMPLES / "matrix.yaml", timeout=60)
    assert proc.returncode == 0
    assert "8 runs" in proc.stdout
    for word in ("0001", "0008", "debian-12", "debian-13", "stable -> updates", "HTTP client"):
        assert word in proc.stdout


def test_matrix_json(capsys) -> None:
    assert main(["matrix", str(EXAMPLES / "matrix.yaml"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["count"] == 8 == len(data["runs"])
    assert [r["id"] for r in data["runs"]] == [f"{i:04d}" for i in range(1, 9)]


@pytest.mark.skipif(not OSG_PARAMS.is_dir(), reason="../shared peer data is absent")
def test_matrix_of_the_osg_parameters_says_1564_runs() -> None:
    proc = run_cli("matrix", OSG_PARAMS, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "1564 runs" in proc.stdout


def test_matrix_notes_a_platform_run_would_refuse(tmp_path: Path) -> None:
    """Listing needs no image, so it still lists; but it says what `run` would stop at."""
    spec = tmp_path / "spec.yaml"
    text = (EXAMPLES / "smoke.yaml").read_text().replace("  suite: smoke/\n", "")
    spec.write_text(text.replace("[debian-12]", "[debian-21]"))
    proc = run_cli("matrix", spec, timeout=60)
    assert proc.returncode == 0 and "1 runs" in proc.stdout
    assert "would stop here" in proc.stderr and "debian-21" in proc.stderr


@pytest.mark.parametrize(
    "args", [("--jobs", "0"), ("--jobs", "-1"), ("-j", "two"), ("--retries", "-1")]
)
def test_bad_counts_are_usage_errors_before_anything_is_made(tmp_path: Path, args) -> None:
    out = tmp_path / "out"
    proc = run_cli("run", EXAMPLES / "smoke.yaml", "--out", out, *args, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert args[0] in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


# -- report ----------------------------------------------------------------------------------
def test_report_on_a_folder_that_is_not_a_run_folder(tmp_path: Path) -> None:
    proc = run_cli("report", tmp_path, timeout=60)
    assert proc.returncode == 2
    assert "not a vmharness run folder" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == [], "report wrote into a folder that is not a run's"


@pytest.mark.parametrize("command", ["resume", "rerun"])
def test_resume_and_rerun_need_a_run_folder(tmp_path: Path, command: str) -> None:
    proc = (
        run_cli(command, tmp_path, "--failed", timeout=60)
        if command == "rerun"
        else run_cli(command, tmp_path, timeout=60)
    )
    assert proc.returncode == 2
    assert "not a vmharness run folder" in proc.stderr


def test_report_rebuilds_from_the_database(tmp_path: Path) -> None:
    """A run folder whose runs are all recorded: report writes every report, exit 1 for a fail."""
    from vmharness.results.model import RunResult, TestCounts
    from vmharness.rundir import RunFolder
    from vmharness.spec import expand, load_spec

    spec = load_spec(EXAMPLES / "matrix.yaml")
    runs = expand(spec)
    folder = RunFolder.create(spec, runs, tmp_path / "rd", backend="local")
    for i, run in enumerate(runs):
        a = folder.db.start_attempt(run.id)
        status = "fail" if i == 3 else "pass"
        folder.db.finish_attempt(
            RunResult(
                run_id=run.id,
                status=status,
                attempt=a,
                counts=TestCounts(ok=1),
                log_dir=f"runs/{run.id}",
            ),
            final=True,
        )
    folder.db.close()
    out_json = tmp_path / "copy" / "r.json"
    proc = run_cli("report", tmp_path / "rd", "--json", out_json, timeout=60)
    assert proc.returncode == 1
    data = json.loads(out_json.read_text())
    statuses = [r["status"] for r in data["runs"]]
    assert statuses.count("fail") == 1 and statuses.count("pass") == 7
    for name in ("report.html", "junit.xml", "results.json"):
        assert (tmp_path / "rd" / name).is_file()


def test_rerun_of_an_unknown_run_id(tmp_path: Path) -> None:
    from vmharness.rundir import RunFolder
    from vmharness.spec import expand, load_spec

    spec = load_spec(EXAMPLES / "smoke.yaml")
    RunFolder.create(spec, expand(spec), tmp_path / "rd", backend="local").db.close()
    proc = run_cli("rerun", tmp_path / "rd", "9999", timeout=60)
    assert "9999" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.returncode == 2


def test_image_prune_rejects_negative_keep(tmp_path: Path) -> None:
    proc = run_cli("image", "prune", "--keep", "-1", timeout=60)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 2


def test_image_list_on_an_empty_cache(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("VMHARNESS_CACHE", str(tmp_path / "cache"))
    assert main(["image", "list"]) == 0
    assert "no cached images" in capsys.readouterr().out


# -- text from specs and guests is printed as text, never as rich markup -----------------------
BRACKET_SPEC = """\
platforms: [debian-12]
sources:
  - label: "src [/]"
    repos: [main]
package_sets:
  - label: "[bold]set[/bold]"
    packages: []
test:
  command: "true"
"""


def test_matrix_prints_labels_with_brackets(tmp_path: Path) -> None:
    spec = tmp_path / "brackets [red].yaml"
    spec.write_text(BRACKET_SPEC)
    proc = run_cli("matrix", spec, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "src [/]" in proc.stdout and "[bold]set[/bold]" in proc.stdout


def test_error_hints_keep_their_brackets(tmp_path: Path) -> None:
    """The OSG source syntax in the hint is `[account:branch;] series; ...`."""
    spec = tmp_path / "osg.yaml"
    spec.write_text(
        "platforms: [rocky_8.x86_64]\nsources:\n  - '24 osg [/]'\n"
        "package_sets:\n  - label: a\n    packages: [x]\n"
    )
    proc = run_cli("matrix", spec, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "'24 osg [/]'" in proc.stderr
    assert "[account:branch;] series; repo, repo [> [series/]repo, repo]" in proc.stderr


def test_a_test_name_with_brackets_does_not_stop_the_run(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """A guest's JUnit test `test_open[/a]` reaches the result line, the reports and the
    terminal summary as text; the run ends normally (exit 1) with every report written."""
    from vmharness.engine import local as engine
    from vmharness.engine.attempt import ImageRef
    from vmharness.results.model import Problem, RunResult, TestCounts

    def fake_execute(run, image, ctx, vm, attempt=1):
        return RunResult(
            run_id=run.id,
            status="fail",
            attempt=attempt,
            reason="1 of 2 tests failed: test_open[/a]",
            counts=TestCounts(ok=1, fail=1),
            problems=[Problem("suite", "test_open[/a]", "[red]C", "FAIL", "-", "x[/b]")],
            log_dir=f"runs/{run.id}",
        )

    image = ImageRef.given(tmp_path / "disk.qcow2")
    monkeypatch.setenv("VMHARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(engine, "images_for", lambda runs, *a, **k: {"debian-12": image})
    monkeypatch.setattr(engine, "choose_accelerator", lambda *a, **k: "tcg")
    monkeypatch.setattr(engine, "execute", fake_execute)
    spec = tmp_path / "spec [red].yaml"
    spec.write_text(BRACKET_SPEC)
    out = tmp_path / "run [bold]"
    code = main(["run", str(spec), "--out", str(out), "--boot", "kernel"])
    stdout = capsys.readouterr().out
    assert code == 1
    assert "test_open[/a]" in stdout and "src [/]" in stdout and "[bold]set[/bold]" in stdout
    assert str(out) in stdout
    for name in ("report.html", "junit.xml", "results.json"):
        assert (out / name).is_file(), name
    assert "test_open[/a]" in (out / "results.json").read_text()


def test_the_live_progress_table_shows_labels_as_text() -> None:
    import io
    import time

    from rich.console import Console

    from vmharness.engine.local import Progress
    from vmharness.spec import PackageSet, Platform, Run, Source, TestSettings, VMSettings

    run = Run(
        id="0001",
        platform=Platform("plat [/]"),
        source=Source("src [bold]"),
        package_set=PackageSet("[/a]"),
        test=TestSettings(),
        vm=VMSettings(),
    )
    progress = Progress(total=1)
    progress.running["0001"] = (run, time.monotonic(), 2)
    buf = io.StringIO()
    Console(file=buf, width=200, color_system=None).print(progress.table())
    out = buf.getvalue()
    assert "plat [/]" in out and "src [bold]" in out and "[/a]" in out
    assert "running (attempt 2)" in out
