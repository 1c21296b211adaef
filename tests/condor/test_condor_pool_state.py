"""scripts/condor-pool's state folder, without a pool: as root the script keeps its state where
only root can write, refuses a folder someone else could have prepared, and reads its record
as data (never runs it). Fast; needs root (the script's `up`/`down` do, and making a folder
owned by another user does)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import POOL_SCRIPT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the pool script's checks are root's")

NOBODY = 65534


def script(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VMHARNESS_POOL_DIR": str(state), "VMHARNESS_POOL_MODE": "native"}
    env.pop("CONDOR_CONFIG", None)
    return subprocess.run(
        [str(POOL_SCRIPT), *args], capture_output=True, text=True, timeout=60, env=env
    )


def planted(state: Path, marker: Path) -> None:
    """What another local user could leave in a folder made before root's first `up`."""
    state.mkdir(parents=True, exist_ok=True)
    (state / "pool.record").write_text(f"MODE=native\ntouch {marker}\nPORT=9620\n")


@pytest.mark.parametrize("command", ["status", "down", "env"])
def test_a_state_folder_owned_by_another_user_is_refused(tmp_path: Path, command: str) -> None:
    state, marker = tmp_path / "state", tmp_path / "pwned"
    planted(state, marker)
    os.chown(state, NOBODY, NOBODY)
    os.chown(state / "pool.record", NOBODY, NOBODY)
    proc = script(state, command)
    assert not marker.exists(), "the script ran a command from the state folder as root"
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert str(state) in proc.stderr and "owned by" in proc.stderr, proc.stderr
    assert "VMHARNESS_POOL_DIR" in proc.stderr  # what to do: another folder, or remove it


@pytest.mark.parametrize("how", ["group-writable", "world-writable", "symlink", "open parent"])
def test_a_state_folder_others_can_write_is_refused(tmp_path: Path, how: str) -> None:
    state = tmp_path / "state"
    if how == "symlink":
        (tmp_path / "real").mkdir()
        state.symlink_to(tmp_path / "real")
    elif how == "open parent":
        (tmp_path / "open").mkdir()
        os.chmod(tmp_path / "open", 0o777)  # writable by all, no sticky bit
        state = tmp_path / "open" / "state"
        state.mkdir()
    else:
        state.mkdir()
        os.chmod(state, 0o775 if how == "group-writable" else 0o777)
    proc = script(state, "status")
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "VMHARNESS_POOL_DIR" in proc.stderr
    assert "writable" in proc.stderr or "symbolic link" in proc.stderr, proc.stderr


def test_the_record_is_read_as_data(tmp_path: Path) -> None:
    """Even in root's own folder, a record line is a value, never a command."""
    state, marker = tmp_path / "state", tmp_path / "pwned"
    state.mkdir()
    (state / "pool.record").write_text(f"MODE=native\nPORT=$(touch {marker})\n")
    proc = script(state, "status")
    assert not marker.exists()
    assert proc.returncode == 1 and "PORT" in proc.stderr, proc.stderr
    (state / "pool.record").write_text("MODE=native\nROOT=/x\nPORT=9644\nPOOL_USER=vmharness\n")
    proc = script(state, "status")
    assert proc.returncode == 3, proc.stderr  # down, but the record was understood
    assert "not stopped cleanly" in proc.stdout


def test_a_missing_state_folder_is_made_root_only(tmp_path: Path) -> None:
    state = tmp_path / "new" / "state"
    proc = script(state, "down")
    assert proc.returncode == 0, proc.stderr
    st = state.stat()
    assert (st.st_uid, st.st_gid) == (0, 0)
    assert st.st_mode & 0o022 == 0, oct(st.st_mode)
