"""Importing an image (images/imports.py): the pure parts, and the refusals that need no
appliance (a file that is not a disk image, an empty partition table). What needs libguestfs
and a real image is in tests/vm/test_vm_image_import.py."""

from __future__ import annotations

import io
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from vmharness.errors import SpecError
from vmharness.images import build as builder
from vmharness.images import imports as im
from vmharness.images.cache import ImageCache
from vmharness.images.certs import HostCredentials


# -- the file ----------------------------------------------------------------------------------
def mbr_disk(path: Path, types: tuple[int, ...] = (0x83,), size: int = 1 << 20) -> Path:
    head = bytearray(512)
    for n, t in enumerate(types):
        entry = 446 + 16 * n
        head[entry] = 0x80 if n == 0 else 0
        head[entry + 4] = t
        struct.pack_into("<II", head, entry + 8, 2048, 4096)
    head[510:512] = b"\x55\xaa"
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


def test_a_raw_disk_with_a_partition_table_is_taken(tmp_path: Path) -> None:
    assert im.check_file(mbr_disk(tmp_path / "disk.img"), tmp_path) == "raw"


def test_a_gpt_disk_is_taken(tmp_path: Path) -> None:
    path = mbr_disk(tmp_path / "gpt.img", types=(0xEE,))
    with open(path, "r+b") as f:
        f.seek(512)
        f.write(b"EFI PART")
    assert im.check_file(path, tmp_path) == "raw"


def test_a_text_file_is_not_a_disk_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello\n" * 1000)
    with pytest.raises(SpecError) as err:
        im.check_file(path, tmp_path)
    assert str(path) in str(err.value)
    assert "not a disk image" in str(err.value)


def test_an_empty_partition_table_is_refused(tmp_path: Path) -> None:
    path = mbr_disk(tmp_path / "empty.img", types=())
    with pytest.raises(SpecError) as err:
        im.check_file(path, tmp_path)
    assert str(path) in str(err.value) and "partition table is empty" in str(err.value)


def test_a_protective_mbr_without_gpt_is_refused(tmp_path: Path) -> None:
    path = mbr_disk(tmp_path / "half.img", types=(0xEE,))
    with pytest.raises(SpecError, match="GPT that is not there"):
        im.check_file(path, tmp_path)


def test_other_formats_are_refused_with_how_to_convert(tmp_path: Path) -> None:
    path = tmp_path / "disk.vmdk"
    path.write_bytes(b"KDMV" + b"\0" * 4096)
    with pytest.raises(SpecError) as err:
        im.check_file(path, tmp_path)
    assert "vmdk" in str(err.value) and "qemu-img convert" in (err.value.hint or "")


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file") as err:
        im.check_file(tmp_path / "nope.qcow2", tmp_path)
    assert "nope.qcow2" in str(err.value)


@pytest.mark.skipif(subprocess.run(["which", "qemu-img"]).returncode, reason="no qemu-img")
def test_a_blank_qcow2_has_no_partition_table(tmp_path: Path) -> None:
    """qcow2 is read through qemu-img (the guest's view), not as bytes of the file."""
    path = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    with pytest.raises(SpecError, match="not a disk image"):
        im.check_file(path, tmp_path)
    raw = mbr_disk(tmp_path / "inner.raw", size=64 << 20)
    good = tmp_path / "good.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(good)], check=True)
    assert im.check_file(good, tmp_path) == "qcow2"


def test_refusals_happen_before_anything_is_made(tmp_path: Path) -> None:
    """Through the cache: nothing is hashed, locked or published for a file refused."""
    cache = ImageCache(tmp_path / "cache")
    path = tmp_path / "notes.txt"
    path.write_text("not a disk\n")
    with pytest.raises(SpecError):
        cache.import_image(path)
    assert cache.list() == []
    assert not (cache.root / "locks").exists() and not (cache.root / "images").exists()


def test_an_image_is_not_named_as_a_built_in_recipe(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")
    disk = mbr_disk(tmp_path / "disk.img")
    with pytest.raises(SpecError, match="built-in recipe"):
        cache.import_image(disk, name="debian-12")
    with pytest.raises(SpecError, match="letters, digits"):
        cache.import_image(disk, name="../up")


# -- the interpreter -------------------------------------------------------------------------
def test_python_candidates_order() -> None:
    names = ["python3.6", "python3.11", "python3.9", "python3-config", "python3.11-config", "ls"]
    assert im.python_candidates(names) == [
        "/usr/bin/python3",
        "/usr/libexec/platform-python",
        "/usr/bin/python3.11",
        "/usr/bin/python3.9",
        "/usr/bin/python3.6",
    ]


def test_choose_python_takes_the_first_new_enough() -> None:
    assert im.choose_python({"/usr/bin/python3": (3, 11)}) == "/usr/bin/python3"
    # Enterprise Linux 8: no /usr/bin/python3, platform-python 3.6
    found = {"/usr/bin/python3": None, "/usr/libexec/platform-python": (3, 6)}
    assert im.choose_python(found) == "/usr/libexec/platform-python"
    # a python3 that is too old is passed over for a newer python3.N
    found2 = {"/usr/bin/python3": (3, 4), "/usr/bin/python3.9": (3, 9)}
    assert im.choose_python(found2) == "/usr/bin/python3.9"
    assert im.choose_python({"/usr/bin/python3": (3, 5)}) is None
    assert im.choose_python({}) is None


def test_parse_version() -> None:
    assert im.parse_version("3.6\n") == (3, 6)
    assert im.parse_version("3.12") == (3, 12)
    assert im.parse_version("sh: python3: not found") is None


def test_agent_unit_runs_on_the_found_interpreter() -> None:
    unit = builder.agent_files()["vmharness-agent.service"].decode()
    out = im.agent_unit(unit, "/usr/libexec/platform-python")
    lines = [line for line in out.splitlines() if line.startswith("ExecStart=")]
    assert lines == ["ExecStart=/usr/libexec/platform-python -sS /usr/local/sbin/vmharness-agent"]
    assert "FailureAction=poweroff-force" in out  # the rest is the unit as built images have it


# -- root= -----------------------------------------------------------------------------------
DEBIAN_FSTAB = """\
# /etc/fstab: static file system information.
UUID=0f3e6c1c-1111-4222-8333-944455556666 / ext4 rw,discard,errors=remount-ro,x-systemd.growfs 0 1
UUID=ABCD-1234 /boot/efi vfat defaults 0 0
"""
EL_LVM_FSTAB = """\
/dev/mapper/rl-root     /                       xfs     defaults        0 0
UUID=aaaa-bbbb /boot                   xfs     defaults        0 0
/dev/mapper/rl-swap     none                    swap    defaults        0 0
"""
FEDORA_BTRFS_FSTAB = "UUID=f00d / btrfs subvol=root,compress=zstd:1 0 0\n"


def test_root_from_fstab() -> None:
    root = im.root_from_fstab(DEBIAN_FSTAB)
    assert root == im.FstabRoot(
        "UUID=0f3e6c1c-1111-4222-8333-944455556666",
        "ext4",
        "rw,discard,errors=remount-ro,x-systemd.growfs",
    )
    assert im.root_from_fstab(EL_LVM_FSTAB).spec == "/dev/mapper/rl-root"  # type: ignore[union-attr]
    assert im.root_from_fstab("# nothing\n") is None


def test_boot_cmdlines_from_grub_bls_extlinux() -> None:
    grub = (
        "menuentry 'Debian GNU/Linux' {\n"
        "\tlinux\t/boot/vmlinuz-6.1.0-18-cloud-amd64 root=UUID=0f3e ro console=tty0 "
        "console=ttyS0,115200\n\tinitrd /boot/initrd.img-6.1.0-18-cloud-amd64\n}\n"
    )
    bls = (
        "title Rocky Linux (4.18.0-513.el8.x86_64) 8.9\nversion 4.18.0-513.el8.x86_64\n"
        "linux /vmlinuz-4.18.0-513.el8.x86_64\noptions $kernelopts $tuned_params\n"
    )
    grubenv = (
        "# GRUB Environment Block\nkernelopts=root=/dev/mapper/rl-root ro "
        "crashkernel=auto resume=/dev/mapper/rl-swap rd.lvm.lv=rl/root rd.lvm.lv=rl/swap "
        "rhgb quiet\n" + "#" * 200
    )
    ext = "DEFAULT l\nLABEL l\n  LINUX /boot/vmlinuz\n  APPEND root=UUID=abc ro quiet\n"
    assert im.boot_cmdlines({"/boot/grub/grub.cfg": grub}) == [
        "root=UUID=0f3e ro console=tty0 console=ttyS0,115200"  # the kernel's path left out
    ]
    el8 = im.boot_cmdlines(
        {"/boot/grub2/grubenv": grubenv, f"{im.BLS_DIR}/abc-4.18.0-513.el8.x86_64.conf": bls}
    )
    assert el8 == [
        "root=/dev/mapper/rl-root ro crashkernel=auto resume=/dev/mapper/rl-swap "
        "rd.lvm.lv=rl/root rd.lvm.lv=rl/swap rhgb quiet $tuned_params"
    ]
    assert im.boot_cmdlines({"/boot/extlinux/extlinux.conf": ext}) == ["root=UUID=abc ro quiet"]


def test_root_argument_prefers_uuid() -> None:
    fstab = im.root_from_fstab(DEBIAN_FSTAB)
    # the bootloader says a device name, fstab says the UUID: the UUID wins
    assert im.root_argument(fstab, ["root=/dev/sda1 ro"]) == (
        "root=UUID=0f3e6c1c-1111-4222-8333-944455556666"
    )
    assert im.root_argument(None, ["root=UUID=abc ro"]) == "root=UUID=abc"
    # LVM: what the bootloader says (the same as fstab here)
    lvm = im.root_from_fstab(EL_LVM_FSTAB)
    assert im.root_argument(lvm, ["root=/dev/mapper/rl-root ro"]) == "root=/dev/mapper/rl-root"
    assert im.root_argument(lvm, []) == "root=/dev/mapper/rl-root"
    assert im.root_argument(None, ["ro quiet"]) is None


def test_kernel_cmdline_keeps_what_finds_the_root_and_adds_ours() -> None:
    lvm = im.root_from_fstab(EL_LVM_FSTAB)
    line = im.kernel_cmdline(
        lvm,
        [
            "root=/dev/mapper/rl-root ro crashkernel=auto resume=/dev/mapper/rl-swap "
            "rd.lvm.lv=rl/root rd.lvm.lv=rl/swap rhgb quiet console=tty0 selinux=1"
        ],
    )
    assert line is not None
    words = line.split()
    assert words[0] == "root=/dev/mapper/rl-root"
    assert "rd.lvm.lv=rl/root" in words and "rd.lvm.lv=rl/swap" in words
    assert "selinux=1" in words and "rootfstype=xfs" in words
    for dropped in ("crashkernel=auto", "rhgb", "console=tty0", "ro"):
        assert dropped not in words, dropped
    assert line.endswith(builder.KERNEL_FLAGS) and "rw" in words
    assert "console=ttyS0" in words
    btrfs = im.kernel_cmdline(im.root_from_fstab(FEDORA_BTRFS_FSTAB), [])
    assert btrfs is not None and "rootflags=subvol=root" in btrfs.split()
    assert im.kernel_cmdline(None, []) is None


# -- what goes in ----------------------------------------------------------------------------
def test_add_console_to_each_bootloader() -> None:
    ext = "LABEL l\n  LINUX /boot/vmlinuz\n  APPEND root=UUID=abc ro quiet\n"
    out = im.add_console("/boot/extlinux/extlinux.conf", ext)
    assert out is not None and "  APPEND root=UUID=abc ro quiet console=ttyS0,115200\n" in out
    assert im.add_console("/boot/extlinux/extlinux.conf", out) is None  # once only
    grub = "menuentry x {\n\tlinux /vmlinuz root=UUID=a ro console=tty0\n\tinitrd /i\n}\n"
    out = im.add_console("/boot/grub/grub.cfg", grub)
    assert out is not None and "console=tty0 console=ttyS0,115200\n" in out  # last: /dev/console
    bls = "title x\nlinux /vmlinuz\noptions $kernelopts $tuned_params\n"
    out = im.add_console(f"{im.BLS_DIR}/x.conf", bls)
    assert out is not None and "options $kernelopts $tuned_params console=ttyS0,115200" in out
    default = 'GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX="rhgb quiet"\n'
    out = im.add_console("/etc/default/grub", default)
    assert out == 'GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX="rhgb quiet console=ttyS0,115200"\n'
    already = "menuentry x {\n\tlinux /vmlinuz console=ttyS0,115200n8\n}\n"
    assert im.add_console("/boot/grub2/grub.cfg", already) is None


def test_with_ca_appends_once() -> None:
    ca = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    bundle = "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n"
    out = im.with_ca(bundle, ca)
    assert out is not None and out.startswith(bundle) and out.endswith(ca.decode())
    assert im.with_ca(out, ca) is None


def test_the_tar_makes_root_owned_files_and_the_enabling_link() -> None:
    files = {"etc/vmharness/hostkey.pem": (b"key", 0o600), "usr/local/sbin/a": (b"#!", 0o755)}
    links = {"etc/systemd/system/multi-user.target.wants/x.service": "/etc/x.service"}
    with tarfile.open(fileobj=io.BytesIO(im.tar_of(files, links))) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == set(files) | set(links)  # no folder entries: theirs stay
    key = members["etc/vmharness/hostkey.pem"]
    assert (key.uid, key.gid, key.mode) == (0, 0, 0o600)
    assert members["usr/local/sbin/a"].mode == 0o755
    link = members["etc/systemd/system/multi-user.target.wants/x.service"]
    assert link.issym() and link.linkname == "/etc/x.service"


def test_guest_identity_is_what_built_images_have() -> None:
    creds = HostCredentials(cert_pem=b"CERT", key_pem=b"KEY", ca_pem=b"CA")
    files = builder.guest_identity("vmtest.localdomain", creds, builder.agent_files(), "x=1\n")
    assert files["etc/hostname"] == (b"vmtest\n", 0o644)
    assert b"127.0.1.1\tvmtest.localdomain vmtest" in files["etc/hosts"][0]
    assert files["etc/vmharness/hostkey.pem"] == (b"KEY", 0o600)
    assert files["etc/grid-security/hostkey.pem"] == (b"KEY", 0o400)
    assert files["usr/local/share/ca-certificates/vmharness-test-ca.crt"] == (b"CA", 0o644)
    assert files["usr/local/sbin/vmharness-agent"][1] == 0o755
    assert "etc/systemd/system/vmharness-agent.service" in files


def test_selinux_type() -> None:
    assert im.selinux_type("SELINUX=enforcing\nSELINUXTYPE=targeted\n") == "targeted"
    assert im.selinux_type("SELINUX=permissive\nSELINUXTYPE=mls # x\n") == "mls"
    assert im.selinux_type("SELINUX=disabled\nSELINUXTYPE=targeted\n") is None
    assert im.selinux_type(None) is None


def test_pick_kernel_newest_with_an_initrd() -> None:
    debian = ["vmlinuz-6.1.0-9-cloud-amd64", "initrd.img-6.1.0-9-cloud-amd64"]
    debian += ["vmlinuz-6.1.0-18-cloud-amd64", "initrd.img-6.1.0-18-cloud-amd64"]
    debian += ["vmlinuz-6.1.0-20-cloud-amd64"]  # no initrd: not bootable here
    assert im.pick_kernel(debian) == (
        "vmlinuz-6.1.0-18-cloud-amd64",
        "initrd.img-6.1.0-18-cloud-amd64",
        "6.1.0-18-cloud-amd64",
    )
    el = [
        "vmlinuz-0-rescue-abc",
        "initramfs-0-rescue-abc.img",
        "vmlinuz-5.14.0-70.13.1.el9_0.x86_64",
        "initramfs-5.14.0-70.13.1.el9_0.x86_64.img",
        "vmlinuz-5.14.0-362.8.1.el9_3.x86_64",
        "initramfs-5.14.0-362.8.1.el9_3.x86_64.img",
    ]
    assert im.pick_kernel(el) == (
        "vmlinuz-5.14.0-362.8.1.el9_3.x86_64",
        "initramfs-5.14.0-362.8.1.el9_3.x86_64.img",
        "5.14.0-362.8.1.el9_3.x86_64",
    )
    assert im.pick_kernel(["grub2", "efi"]) is None


def test_sanitize_name() -> None:
    assert im.sanitize_name("Rocky-9-GenericCloud-Base-9.3") == "Rocky-9-GenericCloud-Base-9.3"
    assert im.sanitize_name("my image (v2)") == "my-image-v2"
    assert im.sanitize_name("...") == "imported"


# -- the cache key ---------------------------------------------------------------------------
def test_import_key_follows_content_and_what_goes_in(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path)
    creds = HostCredentials(cert_pem=b"C", key_pem=b"K", ca_pem=b"CA1")
    key = cache.import_key("a" * 64, "vmtest.localdomain", creds)
    assert key == cache.import_key("a" * 64, "vmtest.localdomain", creds)  # stable
    assert key != cache.import_key("b" * 64, "vmtest.localdomain", creds)  # the file's content
    assert key != cache.import_key("a" * 64, "other.localdomain", creds)  # the hostname
    other_ca = HostCredentials(cert_pem=b"C", key_pem=b"K", ca_pem=b"CA2")
    assert key != cache.import_key("a" * 64, "vmtest.localdomain", other_ca)  # the CA


def test_content_hash_is_remembered_until_the_file_changes(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")
    path = tmp_path / "disk.img"
    path.write_bytes(b"one")
    first = cache._content_sha256(path)
    assert first == cache._content_sha256(path)
    assert len(list((cache.root / "import-hashes").iterdir())) == 1
    path.write_bytes(b"two, longer")
    assert cache._content_sha256(path) != first
