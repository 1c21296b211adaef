"""The VM universe helper (vmharness-vm-gahp), without a pool.

Protocol tests drive the helper's server the way HTCondor's starter does (commands ending in
\\r\\n on one pipe, replies on another) with a fake VM backend at the boundary; they are fast.
The tests marked `vm` run the real helper as root with real qemu (a blank disk: SeaBIOS finds
nothing to boot and waits, so no guest is needed): a VM started as the job's user, stopped,
cleaned up after a crash of the helper, refused for a root-only disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vmharness.condor import gahp
from vmharness.vm import universe

# -- the wire -----------------------------------------------------------------------------------


def test_split_command_escapes_and_separators() -> None:
    assert gahp.split_command("CONDOR_VM_START 12 kvm\r\n") == ["CONDOR_VM_START", "12", "kvm"]
    assert gahp.split_command(r"A b\ c d\\e") == ["A", "b c", "d\\e"]
    assert gahp.split_command("A  B") == ["A", "", "B"]  # two spaces: an empty argument
    assert gahp.split_command("A\tB") == ["A", "B"]


def test_reply_escaping_round_trips_and_stays_under_10_kib() -> None:
    tokens = ["7", "0", "a b\\c", "tab\there"]
    line = gahp.reply_line(tokens)
    assert gahp.split_command(line) == tokens
    assert "\n" not in gahp.reply_line(["x\ny\rz"])
    long = gahp.reply_line(["S", "x" * 50000])
    assert len(long.encode()) <= gahp.MAX_LINE


def test_classad_literals() -> None:
    p = gahp.parse_literal
    assert p('"a \\"quoted\\" \\\\ b"') == 'a "quoted" \\ b'
    assert p("2048") == 2048 and p("-3") == -3 and p("1.5") == 1.5
    assert p("true") is True and p("FALSE") is False and p("undefined") is None
    assert isinstance(p("MY.JobVMMemory + 256"), gahp.Expr)
    assert isinstance(p('"a" + "b"'), gahp.Expr)
    ad = gahp.JobAd()
    assert ad.add_line('VMPARAM_vm_Disk = "a.qcow2:vda:w:qcow2,in.img:vdb:r:raw"')
    assert ad.add_line("JobVMMemory = 512")
    assert not ad.add_line("this is not an attribute")
    assert ad.str("vmparam_VM_DISK") == "a.qcow2:vda:w:qcow2,in.img:vdb:r:raw"
    assert ad.int("JOBVMMEMORY") == 512 and ad.int("missing") is None
    ad.add_line('JobVMMemory = "512"')
    assert ad.int("JobVMMemory") is None  # a string is not a memory size


def test_vm_name_is_htcondors() -> None:
    ad = gahp.JobAd()
    for line in ('User = "alice@pool.example"', "ClusterId = 42", "ProcId = 3"):
        ad.add_line(line)
    assert gahp.vm_name(ad) == "alice_pool.example_42.3"
    assert gahp.safe_name("../../etc/x y") == "_.._.._etc_x_y"
    assert gahp.safe_name(".hidden").startswith("_")


# -- the session, with a fake backend -----------------------------------------------------------
class FakeBackend:
    """VMs that exist only as states; START fails with `fail_with` when it is set."""

    def __init__(self) -> None:
        self.vms: dict[int, str] = {}
        self.fail_with: str | None = None
        self.start_delay = 0.0
        self.quit_called = False
        self.ads: list[gahp.JobAd] = []

    def start(self, vmid: int, ad: gahp.JobAd) -> None:
        time.sleep(self.start_delay)
        self.ads.append(ad)
        if self.fail_with:
            raise gahp.GahpError(self.fail_with, "as the test asked")
        if ad.int("JobVMMemory") is None:
            raise RuntimeError("a bug in the backend")  # must not become a traceback
        self.vms[vmid] = "Running"

    def status(self, vmid: int) -> str | None:
        return self.vms.get(vmid)

    def stop(self, vmid: int) -> bool:
        return self.vms.pop(vmid, None) is not None

    def known(self, vmid: int) -> bool:
        return vmid in self.vms

    def quit(self) -> None:
        self.quit_called = True
        self.vms.clear()


class Session:
    """The starter's side: commands in, reply lines out (with a timeout)."""

    def __init__(self, backend: FakeBackend) -> None:
        self.log: list[str] = []
        r_in, self._w_in = os.pipe()
        self._r_out, w_out = os.pipe()
        self.server = gahp.Server(os.fdopen(w_out, "wb"), backend, self.log.append)
        self._to_server = os.fdopen(self._w_in, "wb")
        self.lines: queue.Queue[str] = queue.Queue()
        self.thread = threading.Thread(
            target=self._serve, args=(os.fdopen(r_in, "rb"),), daemon=True
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.exit_code: int | None = None
        self.thread.start()
        self.reader.start()

    def _serve(self, inp) -> None:
        self.exit_code = self.server.serve(inp)
        self.server.out.close()

    def _read(self) -> None:
        with os.fdopen(self._r_out, "rb") as out:
            for raw in out:
                self.lines.put(raw.decode())

    def send(self, line: str) -> None:
        self._to_server.write(line.encode() + b"\r\n")
        self._to_server.flush()

    def read(self, timeout: float = 5) -> str:
        line = self.lines.get(timeout=timeout)
        assert line.endswith("\n") and len(line.encode()) <= gahp.MAX_LINE + 1
        return line.rstrip("\n")

    def ask(self, line: str) -> str:
        self.send(line)
        return self.read()

    def results(self) -> list[list[str]]:
        head = self.ask("RESULTS").split()
        assert head[0] == "S", head
        return [gahp.split_command(self.read()) for _ in range(int(head[1]))]

    def wait_result(self, reqid: int, timeout: float = 10) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for result in self.results():
                if result[0] == str(reqid):
                    return result
            time.sleep(0.05)
        raise AssertionError(f"no result for request {reqid}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._to_server.close()
        self.thread.join(10)


@pytest.fixture
def session():
    backend = FakeBackend()
    s = Session(backend)
    s.backend = backend  # type: ignore[attr-defined]
    assert s.read() == gahp.BANNER  # the first line: the version banner
    yield s
    s.close()


AD = [
    'VM_WORKING_DIR = "/tmp/sandbox"',
    'JobVMType = "kvm"',
    "JobVMMemory = 512",
    'VMPARAM_vm_Disk = "base.qcow2:vda:w:qcow2"',
    'User = "u@pool"',
    "ClusterId = 1",
    "ProcId = 0",
]


def send_ad(s: Session, lines: list[str] = AD) -> None:
    assert s.ask("CLASSAD") == "S"
    for line in lines:
        s.send(line)  # no reply to the ad's lines
    assert s.ask("CLASSAD_END") == "S"


def test_banner_version_commands_support_vms(session: Session) -> None:
    # the starter reads the banner up to the first newline, skipping backslashes
    assert session.ask("VERSION") == f"S {gahp.BANNER}"
    commands = session.ask("COMMANDS").split()
    assert commands[0] == "S"
    assert set(commands[1:]) == {
        "ASYNC_MODE_ON",
        "ASYNC_MODE_OFF",
        "CONDOR_VM_START",
        "CONDOR_VM_STOP",
        "CONDOR_VM_SUSPEND",
        "CONDOR_VM_SOFT_SUSPEND",
        "CONDOR_VM_RESUME",
        "CONDOR_VM_CHECKPOINT",
        "CONDOR_VM_STATUS",
        "CONDOR_VM_GETPID",
        "QUIT",
        "VERSION",
        "COMMANDS",
        "SUPPORT_VMS",
        "RESULTS",
        "CLASSAD",
        "CLASSAD_END",
    }
    assert session.ask("SUPPORT_VMS") == "S kvm"
    assert session.ask("commands").startswith("S ASYNC_MODE_ON")  # case does not matter


@pytest.mark.parametrize(
    "line",
    [
        "FROBNICATE",
        "",
        "VERSION extra",
        "RESULTS 1",
        "CONDOR_VM_START",
        "CONDOR_VM_START 1",
        "CONDOR_VM_START x kvm",
        "CONDOR_VM_START 0 kvm",
        "CONDOR_VM_START -1 kvm",
        "CONDOR_VM_START 1 xen",
        "CONDOR_VM_START 1 kvm extra",
        "CONDOR_VM_START  1 kvm",
        "CONDOR_VM_STATUS 1 abc",
        "CONDOR_VM_STATUS 1",
        "CONDOR_VM_STOP 1 1 1",
        "CLASSAD_END",
    ],
)
def test_malformed_commands_get_E(session: Session, line: str) -> None:
    assert session.ask(line) == "E"
    assert session.ask("VERSION").startswith("S ")  # and the session goes on
    assert session.results() == []  # nothing was queued by the malformed line


def test_a_job_start_status_getpid_stop_status(session: Session) -> None:
    send_ad(session)
    assert session.ask("CONDOR_VM_START 5 kvm") == "S"
    assert session.wait_result(5) == ["5", "0", "1"]  # VM id 1
    assert session.backend.ads[0].str("VMPARAM_vm_Disk") == "base.qcow2:vda:w:qcow2"
    assert session.backend.ads[0].str("VM_WORKING_DIR") == "/tmp/sandbox"
    assert session.ask("CONDOR_VM_GETPID 6 1") == "S"
    assert session.ask("CONDOR_VM_STATUS 7 1") == "S"
    assert session.results() == [["6", "0", "0"], ["7", "0", "STATUS=Running"]]
    assert session.ask("CONDOR_VM_STOP 8 1") == "S"
    assert session.wait_result(8) == ["8", "0", "NULL"]
    assert session.ask("CONDOR_VM_STATUS 9 1") == "S"
    assert session.wait_result(9) == ["9", "0", "STATUS=Stopped"]  # the VM has ended
    assert session.ask("CONDOR_VM_STOP 10 1") == "S"
    assert session.wait_result(10) == ["10", "1", gahp.ERR_NOT_FOUND]
    assert session.ask("QUIT") == "S"
    session.thread.join(5)
    assert session.exit_code == 0 and session.backend.quit_called


def test_results_come_in_order_and_are_given_once(session: Session) -> None:
    send_ad(session)
    assert session.ask("CONDOR_VM_START 1 kvm") == "S"
    session.wait_result(1)
    for reqid in (20, 21, 22):
        assert session.ask(f"CONDOR_VM_STATUS {reqid} 1") == "S"
    assert session.ask("CONDOR_VM_GETPID 23 1") == "S"
    assert [r[0] for r in session.results()] == ["20", "21", "22", "23"]
    assert session.results() == []


def test_a_pending_request_id_cannot_be_reused(session: Session) -> None:
    send_ad(session)
    session.backend.start_delay = 1.0
    assert session.ask("CONDOR_VM_START 3 kvm") == "S"
    assert session.ask("CONDOR_VM_STATUS 3 1") == "E"  # 3 is still pending
    assert session.wait_result(3) == ["3", "0", "1"]
    assert session.ask("CONDOR_VM_STATUS 3 1") == "S"  # free again once its result is out


def test_async_mode_says_R_once_until_results(session: Session) -> None:
    assert session.ask("ASYNC_MODE_ON") == "S"
    send_ad(session)
    assert session.ask("CONDOR_VM_START 1 kvm") == "S"
    assert session.read() == "R"
    assert session.ask("CONDOR_VM_STATUS 2 1") == "S"  # a second result: no second R
    assert session.ask("CONDOR_VM_GETPID 3 1") == "S"
    with pytest.raises(queue.Empty):
        session.read(timeout=0.3)
    assert [r[0] for r in session.results()] == ["1", "2", "3"]
    assert session.ask("CONDOR_VM_STATUS 4 1") == "S"
    assert session.read() == "R"  # after RESULTS, the next result signals again
    assert session.ask("ASYNC_MODE_OFF") == "S"
    session.results()
    assert session.ask("CONDOR_VM_STATUS 5 1") == "S"
    with pytest.raises(queue.Empty):
        session.read(timeout=0.3)


def test_start_without_an_ad_and_a_start_that_fails(session: Session) -> None:
    assert session.ask("CONDOR_VM_START 1 kvm") == "S"
    assert session.wait_result(1) == ["1", "1", gahp.ERR_NO_AD]
    send_ad(session)
    session.backend.fail_with = gahp.ERR_BAD_DISK
    assert session.ask("CONDOR_VM_START 2 kvm") == "S"
    assert session.wait_result(2) == ["2", "1", gahp.ERR_BAD_DISK]
    assert any("INVALID_DISK_PARAM (HTCondor holds the job)" in m for m in session.log)
    session.backend.fail_with = None
    send_ad(session, [line for line in AD if not line.startswith("JobVMMemory")])
    assert session.ask("CONDOR_VM_START 3 kvm") == "S"
    assert session.wait_result(3) == ["3", "1", gahp.ERR_INTERNAL]  # a bug: no traceback
    assert any("RuntimeError" in m for m in session.log)


def test_suspend_and_checkpoint_are_unsupported(session: Session) -> None:
    send_ad(session)
    session.ask("CONDOR_VM_START 1 kvm")
    session.wait_result(1)
    for reqid, cmd in enumerate(
        ["SUSPEND", "SOFT_SUSPEND", "RESUME", "CHECKPOINT", "GETPID"], start=2
    ):
        assert session.ask(f"CONDOR_VM_{cmd} {reqid} 9") == "S"  # VM 9 does not exist
        assert session.wait_result(reqid) == [str(reqid), "1", gahp.ERR_NOT_FOUND]
    assert session.ask("CONDOR_VM_SUSPEND 20 1") == "S"
    assert session.ask("CONDOR_VM_SOFT_SUSPEND 21 1") == "S"
    assert session.ask("CONDOR_VM_RESUME 22 1") == "S"
    assert session.ask("CONDOR_VM_CHECKPOINT 23 1") == "S"
    assert session.results() == [
        ["20", "1", gahp.ERR_NO_SUSPEND],
        ["21", "1", gahp.ERR_NO_SUSPEND],
        ["22", "1", gahp.ERR_NO_SUSPEND],
        ["23", "1", gahp.ERR_NO_CHECKPOINT],
    ]
    assert session.ask("CONDOR_VM_STATUS 24 1") == "S"
    assert session.wait_result(24) == ["24", "0", "STATUS=Running"]  # still running


def test_end_of_input_stops_every_vm(session: Session) -> None:
    send_ad(session)
    session.ask("CONDOR_VM_START 1 kvm")
    session.wait_result(1)
    session.close()
    assert session.exit_code == 0 and session.backend.quit_called
    assert any("stdin closed" in m for m in session.log)


def test_an_overlong_line_is_malformed(session: Session) -> None:
    session.send("VERSION" + " x" * (gahp.MAX_INPUT_LINE // 2 + 10))
    assert session.read() == "E"
    assert session.ask("SUPPORT_VMS") == "S kvm"


# -- the job ad as the helper reads it ---------------------------------------------------------
def test_vm_disk_parsing(tmp_path: Path) -> None:
    (tmp_path / "base.dsk").write_bytes(b"x")
    (tmp_path / "boot.iso").write_bytes(b"x")
    disks = universe.parse_vm_disk(
        "base.dsk:vda:w:raw, /shared/data.qcow2:vdb:r , boot.iso:hdc:w", tmp_path
    )
    assert [d.path for d in disks] == [
        tmp_path / "base.dsk",
        Path("/shared/data.qcow2"),
        tmp_path / "boot.iso",
    ]
    assert [d.writable for d in disks] == [True, False, False]  # a CD-ROM is read-only
    assert [d.fmt for d in disks] == ["raw", None, "raw"]
    assert [d.cdrom for d in disks] == [False, False, True]
    # a transferred file is found in the sandbox by its base name, wherever it came from
    (tmp_path / "img.qcow2").write_bytes(b"x")
    assert universe.parse_vm_disk("/submit/side/img.qcow2:vda:rw", tmp_path)[0].path == (
        tmp_path / "img.qcow2"
    )
    for bad, words in [
        ("", "names no disk"),
        ("base.dsk:vda", "file:device:permission"),
        ("base.dsk:vda:w:raw:x", "file:device:permission"),
        ("base.dsk:floppy:w", "device"),
        ("base.dsk:vda:w:exotic", "format"),
        ("missing.img:vda:w", "not in the job's sandbox"),
        ("base.dsk:vda:w,boot.iso:vda:r", "two disks on one device"),
        ("base.dsk:vda:w,base.dsk:vdb:w", "named twice"),
    ]:
        with pytest.raises(universe.DiskSpecError, match=words):
            universe.parse_vm_disk(bad, tmp_path)


def test_command_line_uses_the_local_machine_and_the_jobs_disks(tmp_path: Path) -> None:
    disks = [
        universe.Disk("in.img", tmp_path / "in.img", "vdb", False, "raw", False),
        universe.Disk("base.qcow2", tmp_path / "base.qcow2", "vda", True, "qcow2", False),
        universe.Disk("x.iso", tmp_path / "x.iso", "hdc", False, "raw", True),
    ]
    vm = universe.UniverseVM(
        name="u_pool_1.0",
        disks=[disks[1], disks[0], disks[2]],
        memory_mib=768,
        cpus=2,
        network="user",
        mac="52:54:00:12:34:56",
        console=tmp_path / "console.log",
    )
    cmd = universe.universe_command(vm, "tcg", 7, tmp_path / "qmp.sock", tmp_path)
    text = " ".join(cmd)
    assert cmd[0] == "qemu-system-x86_64" and "q35,accel=tcg" in cmd
    assert cmd[cmd.index("-m") + 1] == "768" and cmd[cmd.index("-smp") + 1] == "2"
    assert "-qmp" not in cmd and "socket,id=vmh-qmp,fd=7,server=on,wait=off" in cmd
    assert "user,model=virtio-net-pci,mac=52:54:00:12:34:56" in cmd
    assert "stdio,id=vmh-serial,signal=off" in cmd  # the host writes console.log, capped
    assert "-kernel" not in cmd  # VM universe boots the disk's own loader
    drives = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-drive"]
    devices = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-device"]
    assert drives[0].startswith(f"file={tmp_path}/base.qcow2,") and "format=qcow2" in drives[0]
    assert "readonly=on" in drives[1] and "media=cdrom" in drives[2]
    assert "virtio-blk-pci,drive=vmh-disk0,bootindex=1" in devices  # vda first, and it boots
    assert "virtio-blk-pci,drive=vmh-disk1" in devices
    assert "ide-cd,drive=vmh-disk2,bus=ide.0" in devices
    no_net = universe.universe_command(
        universe.UniverseVM("n", [disks[1]], 256, network="none", mac="52:54:00:00:00:01"),
        "kvm",
        3,
        tmp_path / "q",
        tmp_path,
    )
    assert "none" in no_net[no_net.index("-nic") + 1] and "mac=" not in " ".join(no_net)
    assert no_net[no_net.index("-cpu") + 1] == "host" and "," not in text.split("-name ")[1][:12]


def _backend(tmp_path: Path, uid: int = 12345) -> gahp.QemuBackend:
    cfg = gahp.GahpConfig(max_memory_mib=4096, networking=True, registry=tmp_path / "reg")
    user = universe.JobUser(uid=uid, gid=uid, groups=(uid,), name="someone")
    return gahp.QemuBackend(cfg, user, gahp.Registry(cfg.registry), lambda _m: None)


def _ad(sandbox: Path, **attrs: str) -> gahp.JobAd:
    ad = gahp.JobAd()
    base = {
        "VM_WORKING_DIR": f'"{sandbox}"',
        "JobVMType": '"kvm"',
        "JobVMMemory": "512",
        "VMPARAM_vm_Disk": '"base.qcow2:vda:w:qcow2"',
        "User": '"u@pool"',
        "ClusterId": "3",
        "ProcId": "0",
    }
    base.update(attrs)
    for name, value in base.items():
        if value is not None:
            ad.add_line(f"{name} = {value}")
    return ad


@pytest.mark.parametrize(
    ("attrs", "code"),
    [
        ({"JobVMMemory": None}, gahp.ERR_NO_MEMORY),
        ({"JobVMMemory": '"lots"'}, gahp.ERR_NO_MEMORY),
        ({"JobVMMemory": "0"}, gahp.ERR_NO_MEMORY),
        ({"JobVMMemory": "999999"}, gahp.ERR_TOO_MUCH_MEMORY),
        ({"VMPARAM_vm_Disk": None}, gahp.ERR_NO_DISK),
        ({"VMPARAM_vm_Disk": '"base.qcow2"'}, gahp.ERR_BAD_DISK),
        ({"VMPARAM_vm_Disk": '"nowhere.img:vda:w"'}, gahp.ERR_BAD_DISK),
        ({"JobVMType": '"xen"'}, gahp.ERR_VM_TYPE),
        ({"JobVMNetworking": "true", "JobVMNetworkingType": '"bridge"'}, gahp.ERR_NETWORKING_TYPE),
        ({"VM_WORKING_DIR": '"relative/dir"'}, gahp.ERR_NO_AD),
    ],
)
def test_malformed_job_ads_get_the_error_code(tmp_path: Path, attrs: dict, code: str) -> None:
    """The starter holds the job for the first four codes (see HOLDING_ERRORS)."""
    (tmp_path / "base.qcow2").write_bytes(b"QFI\xfb")
    with pytest.raises(gahp.GahpError) as err:
        _backend(tmp_path).describe(1, _ad(tmp_path, **attrs))
    assert err.value.code == code, err.value.detail
    assert err.value.detail  # the log says what was wrong


def test_networking_when_the_machine_has_none(tmp_path: Path) -> None:
    backend = _backend(tmp_path)
    backend.config.networking = False
    with pytest.raises(gahp.GahpError) as err:
        backend.describe(1, _ad(tmp_path, JobVMNetworking="true"))
    assert err.value.code == gahp.ERR_NETWORKING


def test_discovery_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setattr(gahp.shutil, "which", lambda name: f"/usr/bin/{name}")
    out, log = io.StringIO(), []
    cfg = gahp.GahpConfig(
        max_memory_mib=3000, networking=True, registry=tmp_path / "reg", networking_types=("nat",)
    )
    assert gahp.discovery(cfg, out, log.append) == 0
    assert out.getvalue().splitlines() == [
        'VM_GAHP_VERSION = "0.0.1"',
        'VM_Type = "kvm"',
        "VM_Memory = 3000",
        "VM_Networking = TRUE",
        'VM_Networking_Types = "nat"',
        f'VmharnessVMGahp = "{gahp.__version__}"',
    ]
    out = io.StringIO()
    cfg.networking = False
    gahp.discovery(cfg, out, log.append)
    assert "VM_Networking = FALSE" in out.getvalue() and "Types" not in out.getvalue()
    monkeypatch.setattr(gahp.shutil, "which", lambda name: None)
    out = io.StringIO()
    assert gahp.discovery(cfg, out, log.append) == 1
    assert out.getvalue() == ""  # no qemu: nothing, and the startd offers no VM universe
    assert any("not installed" in m for m in log)


def test_config_from_htcondor(tmp_path: Path) -> None:
    values = {
        "VM_MEMORY": "2048",
        "VM_NETWORKING": "True",
        "VM_NETWORKING_TYPE": "nat, bridge",
        "VM_GAHP_LOG": "/var/log/condor/VMGahpLog",
        "VMHARNESS_VM_GAHP_REGISTRY": str(tmp_path),
    }
    cfg = gahp.GahpConfig.load(values.get)
    assert cfg.max_memory_mib == 2048 and cfg.networking and cfg.networking_types == ("nat",)
    assert cfg.registry == tmp_path and cfg.log_file == "/var/log/condor/VMGahpLog"
    assert any("bridge" in n for n in cfg.notes)
    bare = gahp.GahpConfig.load(lambda _n: None)
    assert bare.max_memory_mib > 0 and not bare.networking and bare.accel == "auto"
    assert any("VM_MEMORY is not set" in n for n in bare.notes)


def test_main_usage_errors_print_nothing_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["-f"], ["-M", "9"], ["-M", "4", "vmtype", "kvm"], ["-M", "0"], ["bogus"]):
        assert gahp.main(argv) == 1
        out = capsys.readouterr()
        assert out.out == "" and "usage" in out.err


def test_submit_with_vmharnesss_helper_brings_the_console_back() -> None:
    from vmharness.condor import submit

    def opts(**kw: object) -> submit.SubmitOptions:
        base: dict = {"style": "vm", "node_python": "/py", "owner": None, "deny": False}
        return submit.SubmitOptions(**base, **kw)

    mine = opts(vm_helper=True)
    other = opts(vm_helper=False)
    desc = submit.vm_description(Path("/r"), mine)
    assert desc["transfer_output_files"] == "output.img,console.log,outcome.json"
    assert desc["transfer_output_remaps"] == (
        '"output.img = output.returned.img; console.log = /r/runs/$(vmh_run)/console.log"'
    )
    assert desc["requirements"] == "(TARGET.VmharnessVMGahp =!= undefined)"
    assert desc["My.VmharnessWallTimeout"] == "$(vmh_vm_wall)"
    plain = submit.vm_description(Path("/r"), other)  # HTCondor's own helper: no console.log
    assert plain["transfer_output_files"] == "output.img" and "requirements" not in plain
    assert plain["transfer_output_remaps"] == '"output.img = output.returned.img"'
    assert "My.VmharnessWallTimeout" not in plain
    req = submit.vm_description(Path("/r"), opts(vm_helper=True, requirements='Machine != "x"'))
    assert req["requirements"] == '(TARGET.VmharnessVMGahp =!= undefined) && (Machine != "x")'
    # with the execute-host deny-list on, the helper's term keeps the deny-list's
    denied = submit.SubmitOptions(
        style="vm", vm_helper=True, node_python="/py", owner=None, requirements='Machine != "x"'
    )
    both = submit.vm_description(Path("/r"), denied)["requirements"]
    assert both.startswith('(TARGET.VmharnessVMGahp =!= undefined) && ((Machine != "x") && ')
    assert "VmharnessDenied" in both


# -- the registry -------------------------------------------------------------------------------
def test_registry_sweep_stops_the_vms_of_dead_helpers(tmp_path: Path) -> None:
    reg = gahp.Registry(tmp_path / "reg")
    sleeper = subprocess.Popen(["sleep", "60"])
    dead_helper = subprocess.Popen(["true"])
    dead_helper.wait()
    try:
        reg.record(
            "u_1.0",
            helper_pid=dead_helper.pid,
            helper_start="1",
            qemu_pid=sleeper.pid,
            qemu_start=gahp._start_time(sleeper.pid),
        )
        me = {"helper_pid": os.getpid(), "helper_start": gahp._start_time(os.getpid())}
        reg.record("u_2.0", qemu_pid=0, **me)
        assert reg.sweep() == 1
        assert sleeper.wait(timeout=10) != 0  # stopped
        assert [e["name"] for e in reg.entries()] == ["u_2.0"]  # a live helper's is kept
        # a recycled pid is never killed: the start time must match too
        reg.record("u_3.0", helper_pid=1, helper_start="0", qemu_pid=os.getpid(), qemu_start="0")
        reg.sweep()
        assert [e["name"] for e in reg.entries()] == ["u_2.0"]
        assert (tmp_path / "reg").stat().st_mode & 0o077 == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            sleeper.kill()


def test_kill_mode_matches_the_name_only(tmp_path: Path) -> None:
    reg = gahp.Registry(tmp_path / "reg")
    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    me = {"helper_pid": os.getpid(), "helper_start": gahp._start_time(os.getpid())}
    try:
        for name, proc in zip(["u_1.0", "u_1.0-vm2", "u_1.01"], procs, strict=True):
            reg.record(name, qemu_pid=proc.pid, qemu_start=gahp._start_time(proc.pid), **me)
        assert reg.kill_matching("u_1.0") == 2
        assert procs[0].wait(timeout=10) and procs[1].wait(timeout=10)
        assert procs[2].poll() is None
        assert [e["name"] for e in reg.entries()] == ["u_1.01"]
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()


# -- the real helper, as root, with real qemu ---------------------------------------------------
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def job_user():
    """The unprivileged account the pool's jobs run as (made by scripts/condor-pool up)."""
    import pwd

    if os.geteuid() != 0:
        pytest.skip("the helper runs as root")
    for name in (os.environ.get("VMHARNESS_POOL_USER", "vmharness"), "nobody"):
        with contextlib.suppress(KeyError):
            pw = pwd.getpwnam(name)
            return universe.JobUser.from_ids(pw.pw_uid, pw.pw_gid)
    pytest.skip("no unprivileged account")


def helper(tmp_path: Path, user: universe.JobUser, sandbox: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("_CONDOR_", "CONDOR_CONFIG"))}
    env.update(
        PYTHONPATH=str(REPO / "src"),
        VMGAHP_USER_UID=str(user.uid),
        VMGAHP_USER_GID=str(user.gid),
        VMGAHP_VMTYPE="kvm",
        VMGAHP_WORKING_DIR=str(sandbox),
        CONDOR_CONFIG=str(tmp_path / "no-such-config"),
        _CONDOR_VM_MEMORY="1024",
        _CONDOR_VM_NETWORKING="false",
        _CONDOR_VMHARNESS_VM_GAHP_REGISTRY=str(tmp_path / "registry"),
        _CONDOR_VMHARNESS_VM_GAHP_ACCEL="tcg",
        _CONDOR_VM_GAHP_LOG=str(tmp_path / "VMGahpLog"),
    )
    return subprocess.Popen(
        [sys.executable, "-m", "vmharness.condor.gahp", "-f", "-M", "3"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd=sandbox,
    )


class Starter:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        assert proc.stdout is not None
        assert proc.stdout.readline().decode().strip() == gahp.BANNER

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\r\n")
        self.proc.stdin.flush()

    def ask(self, line: str) -> str:
        self.send(line)
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().decode().rstrip("\n")

    def result(self, reqid: int, timeout: float = 90) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            head = self.ask("RESULTS").split()
            assert head[0] == "S"
            for _ in range(int(head[1])):
                assert self.proc.stdout is not None
                got = gahp.split_command(self.proc.stdout.readline().decode())
                if got[0] == str(reqid):
                    return got
            time.sleep(0.5)
        raise AssertionError(f"no result for {reqid}")

    def send_ad(self, sandbox: Path, disk: str, memory: int | None = 128) -> None:
        assert self.ask("CLASSAD") == "S"
        lines = [
            f'VM_WORKING_DIR = "{sandbox}"',
            'JobVMType = "kvm"',
            f'VMPARAM_vm_Disk = "{disk}"',
            f'User = "gahptest{os.getpid()}@pool"',
            "ClusterId = 77",
            "ProcId = 0",
            "JobVMVNCConsole = true",
        ]
        if memory is not None:
            lines.append(f"JobVMMemory = {memory}")
        for line in lines:
            self.send(line)
        assert self.ask("CLASSAD_END") == "S"


def qemu_of(sandbox: Path) -> list[int]:
    from conftest import qemu_pids_under

    return qemu_pids_under(sandbox)


@pytest.fixture
def box(job_user: universe.JobUser):
    """A folder the job's user may enter (pytest's own are root's only), with the sandbox."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="vmh-gahp-test-", dir="/tmp"))
    path.chmod(0o755)
    sandbox = path / "sandbox"
    sandbox.mkdir()
    os.chown(sandbox, job_user.uid, job_user.gid)
    yield path
    left = qemu_of(sandbox)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)
    assert not left, "qemu left running"


@pytest.fixture
def sandbox(box: Path) -> Path:
    return box / "sandbox"


def blank_disk(sandbox: Path, user: universe.JobUser, name: str = "blank.img") -> Path:
    disk = sandbox / name
    disk.write_bytes(b"\0" * (1 << 20))
    os.chown(disk, user.uid, user.gid)
    return disk


@pytest.mark.vm
def test_real_vm_runs_as_the_job_user_and_stops(box: Path, sandbox: Path, job_user) -> None:
    disk = blank_disk(sandbox, job_user)
    before = disk.stat().st_mtime
    proc = helper(box, job_user, sandbox)
    s = Starter(proc)
    s.send_ad(sandbox, "blank.img:vda:w:raw")
    assert s.ask("CONDOR_VM_START 1 kvm") == "S"
    assert s.result(1) == ["1", "0", "1"]
    pids = qemu_of(sandbox)
    assert len(pids) == 1
    status = Path(f"/proc/{pids[0]}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == [str(job_user.uid)] * 4  # qemu runs as the job's user
    entries = gahp.Registry(box / "registry").entries()
    assert [e["qemu_pid"] for e in entries] == pids
    assert (box / "registry").stat().st_uid == 0
    assert not list(sandbox.glob("*.sock"))  # the monitor is not in the sandbox
    s.ask("CONDOR_VM_STATUS 2 1")
    assert s.result(2) == ["2", "0", "STATUS=Running"]
    s.ask("CONDOR_VM_GETPID 3 1")
    assert s.result(3) == ["3", "0", "0"]
    s.ask("CONDOR_VM_STOP 4 1")
    assert s.result(4, timeout=30) == ["4", "0", "NULL"]
    assert not qemu_of(sandbox)
    s.ask("CONDOR_VM_STATUS 5 1")
    assert s.result(5) == ["5", "0", "STATUS=Stopped"]
    assert s.ask("QUIT") == "S"
    assert proc.wait(timeout=30) == 0
    assert gahp.Registry(box / "registry").entries() == []
    assert disk.stat().st_mtime > before  # a written disk goes back with the job
    outcome = json.loads((sandbox / "outcome.json").read_text())
    assert outcome["ended"] == "error" and "CONDOR_VM_STOP" in outcome["reason"]
    assert (sandbox / "console.log").stat().st_uid == job_user.uid
    log = (box / "VMGahpLog").read_text()
    assert "accelerator tcg" in log and "not implemented, ignored: vm_vnc" in log


@pytest.mark.vm
def test_a_root_only_disk_is_refused_and_never_opened(box: Path, sandbox: Path, job_user) -> None:
    proc = helper(box, job_user, sandbox)
    s = Starter(proc)
    s.send_ad(sandbox, "/etc/shadow:vda:w:raw")
    assert s.ask("CONDOR_VM_START 1 kvm") == "S"
    assert s.result(1) == ["1", "1", gahp.ERR_BAD_DISK]
    s.send_ad(sandbox, "/etc/shadow:vda:w:raw", memory=None)
    assert s.ask("CONDOR_VM_START 2 kvm") == "S"
    assert s.result(2) == ["2", "1", gahp.ERR_NO_MEMORY]
    assert s.ask("QUIT") == "S" and proc.wait(timeout=30) == 0
    log = (box / "VMGahpLog").read_text()
    assert "/etc/shadow" in log and "may not read and write it" in log
    assert "HTCondor holds the job" in log
    assert not qemu_of(sandbox) and not list(sandbox.iterdir())


@pytest.mark.vm
def test_a_killed_helper_leaves_no_qemu_and_kill_mode_clears_the_registry(
    box: Path, sandbox: Path, job_user
) -> None:
    blank_disk(sandbox, job_user)
    proc = helper(box, job_user, sandbox)
    s = Starter(proc)
    s.send_ad(sandbox, "blank.img:vda:w:raw")
    s.ask("CONDOR_VM_START 1 kvm")
    assert s.result(1) == ["1", "0", "1"]
    pids = qemu_of(sandbox)
    assert len(pids) == 1
    proc.kill()  # a crash of the helper
    proc.wait()
    deadline = time.monotonic() + 10
    while qemu_of(sandbox) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not qemu_of(sandbox), "qemu outlived its helper"
    reg = gahp.Registry(box / "registry")
    assert len(reg.entries()) == 1  # until the starter's kill mode (or a sweep) clears it
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO / "src"),
        "CONDOR_CONFIG": str(box / "none"),
        "_CONDOR_VMHARNESS_VM_GAHP_REGISTRY": str(box / "registry"),
    }
    name = f"gahptest{os.getpid()}_pool_77.0"
    kill = subprocess.run(
        [sys.executable, "-m", "vmharness.condor.gahp", "-f", "-t", "-M", "4"]
        + ["vmtype", "kvm", "match", name],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert kill.returncode == 0 and kill.stdout == "", kill.stderr
    assert reg.entries() == []
