# SPDX-License-Identifier: LGPL-2.1-or-later
"""Kernel device names (/dev/loopN, /dev/sdX, ...) given as a data file,
backing file or detached header draw a warning naming the device's stable
/dev/disk/by-* link; stable names and plain files draw none.  Real loop
devices; the /dev/disk tree is a fake one of symlinks to them."""

import os
import subprocess
import sys

from pyqcrypt.device_names import is_unstable, stable_alias, unstable_warning

from conftest import write_file


def cli(*args):
    return subprocess.run([sys.executable, "-m", "pyqcrypt", *map(str, args)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)


def _links(root, target, names):
    """Symlinks root/KIND/NAME -> target for each "KIND/NAME" in *names*."""
    for name in names:
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.symlink(target, path)


def _loop(loop_devices, workdir, name="disk.img", size=1 << 20):
    path = os.path.join(workdir, name)
    with open(path, "wb") as fh:
        fh.truncate(size)
    return loop_devices(path)


def test_preferred_link_is_named(loop_devices, workdir):
    dev = _loop(loop_devices, workdir)
    other = _loop(loop_devices, workdir, "other.img")
    root = os.path.join(workdir, "disk")
    _links(root, dev, ["by-path/pci-0000:00:1f.2-ata-1", "by-uuid/1234-ABCD",
                       "by-partuuid/0a0b0c0d-01", "by-id/wwn-0x5000", "by-id/ata-DISK_SERIAL"])
    _links(root, other, ["by-id/aaa-other-disk"])       # sorts first, another device
    _links(root, "/dev/null", ["by-id/aab-not-a-block-device"])
    assert is_unstable(dev)
    assert stable_alias(dev, root) == os.path.join(root, "by-id/ata-DISK_SERIAL")
    text = unstable_warning(dev, "data file", root)
    assert dev in text and "another disk after a reboot" in text
    assert text.endswith("the stable name %s is the same device"
                         % os.path.join(root, "by-id/ata-DISK_SERIAL"))
    for gone, then in (("by-id", "by-partuuid/0a0b0c0d-01"), ("by-partuuid", "by-uuid/1234-ABCD"),
                       ("by-uuid", "by-path/pci-0000:00:1f.2-ata-1"), ("by-path", None)):
        for name in os.listdir(os.path.join(root, gone)):
            os.unlink(os.path.join(root, gone, name))
        want = then and os.path.join(root, then)
        assert stable_alias(dev, root) == want, gone
    assert "no %s/by-id, by-partuuid, by-uuid or by-path link to it exists" % root \
        in unstable_warning(dev, "data file", root)


def test_stable_names_and_files_are_quiet(loop_devices, workdir):
    dev = _loop(loop_devices, workdir)
    link = os.path.join(workdir, "by-id-like")
    os.symlink(dev, link)
    plain = write_file(os.path.join(workdir, "plain"), b"x")
    for path in (link, plain, os.path.join(workdir, "missing"), "/dev/null"):
        assert not is_unstable(path), path
        assert unstable_warning(path, "data file") is None, path


def test_cli_warns_for_backing_data_file_and_header(loop_devices, workdir):
    dev = _loop(loop_devices, workdir, size=4 << 20)
    overlay = os.path.join(workdir, "overlay.qcow2")
    proc = cli("create", "-q", "-f", "qcow2", "-b", dev, "-F", "raw", overlay)
    assert proc.returncode == 0, proc.stderr
    warning = ("pyqcrypt: warning: backing file %s is a kernel device name, which may point at "
               "another disk after a reboot; " % dev)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(warning), proc.stderr
    assert "/dev/disk" in lines[0]          # the link, or that there is none
    # the name is stored as given, not rewritten
    assert cli("info", overlay).stdout.count("backing file: %s" % dev) == 1
    # rebase -u to the same device under a stable name: no warning
    link = os.path.join(workdir, "stable-name")
    os.symlink(dev, link)
    proc = cli("rebase", "-u", "-b", link, "-F", "raw", overlay)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    proc = cli("rebase", "-u", "-b", dev, "-F", "raw", overlay)
    assert proc.returncode == 0 and proc.stderr.startswith(warning), proc.stderr
    # a detached LUKS header written onto a loop device
    key = write_file(os.path.join(workdir, "key"), b"pw")
    data = write_file(os.path.join(workdir, "payload"), b"\0" * (1 << 20))
    proc = cli("luksFormat", "-q", "--key-file", key, "--pbkdf-force-iterations", 1000,
               "--header", dev, data)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("pyqcrypt: warning: detached LUKS header %s is a kernel "
                                  "device name" % dev), proc.stderr
    # -o data_file=DEVICE: the warning comes before create's own refusal
    proc = cli("create", "-f", "qcow2", "-o", "data_file=%s" % dev,
               os.path.join(workdir, "d.qcow2"), "1M")
    assert proc.stderr.startswith("pyqcrypt: warning: data file %s is a kernel" % dev), proc.stderr


def test_convert_warns_for_a_data_file_device(loop_devices, workdir):
    from conftest import cs_format
    vol = cs_format(workdir, "vol.luks", b"pw")
    payload = loop_devices(vol, offset=2 << 20)         # cryptsetup's 4096-sector payload offset
    out = os.path.join(workdir, "out.qcow2")
    proc = cli("convert", "--keep-ciphertext", "-O", "qcow2", "-o",
               "data_file=%s,data_file_existing=on" % payload, vol, out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "pyqcrypt: warning: data file %s is a kernel device name, which may point at another "
        "disk after a reboot; no /dev/disk/by-id, by-partuuid, by-uuid or by-path link to it "
        "exists" % payload] or "the stable name" in proc.stderr, proc.stderr
    assert "data file: %s" % payload in cli("info", out).stdout
