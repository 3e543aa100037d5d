# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt attach``: the QEMU -blockdev it prints, given to qemu-io as
``--object secret,... --image-opts`` (the same options), opens the image
and reads back known bytes (and fails with a wrong or missing secret);
the libvirt XML validates against libvirt's RelaxNG schemas
(virt-xml-validate) and has the structure libvirt documents."""

import os
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET

from conftest import cs_format, qemu_img, qemu_io, qemu_io_refused, qemu_secret, tool, write_file

PW = b"attach me"
UUID = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"
DOMAIN = ("<domain type='kvm'><name>t</name><memory>65536</memory><os><type>hvm</type></os>"
          "<devices>%s</devices></domain>")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "pyqcrypt", *map(str, args)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)


def attach(image, passfile, *extra):
    """attach's output split into {'secret': Element, 'disk': Element,
    'qemu': [args]} (and 'stderr')."""
    proc = cli("attach", "--secret-uuid", UUID, "--passphrase-file", passfile, *extra, image)
    assert proc.returncode == 0, proc.stderr
    blocks, current = [], []
    for line in proc.stdout.splitlines():
        if line.startswith("#"):
            if current:
                blocks.append("\n".join(current))
            current = []
        else:
            current.append(line)
    blocks.append("\n".join(current))
    out = {"stderr": proc.stderr, "text": proc.stdout}
    for block in blocks:
        if block.startswith("<"):
            element = ET.fromstring(block)
            out[element.tag] = element
        else:
            out["qemu"] = shlex.split(block)
    return out


def image_opts(qemu_args):
    """(--object values, the -blockdev value) of attach's QEMU line."""
    objects = [qemu_args[i + 1] for i, a in enumerate(qemu_args) if a == "--object"]
    blockdev = qemu_args[qemu_args.index("-blockdev") + 1]
    return objects, blockdev


def validate(element, schema="domain"):
    """virt-xml-validate's verdict on *element* (a <disk> wrapped into a
    minimal domain, in a file of the test's scratch directory): (ok, output)."""
    text = ET.tostring(element, encoding="unicode")
    if element.tag == "disk":
        text = DOMAIN % text
    path = write_file(os.path.abspath("validate-%s.xml" % schema), text.encode())
    proc = subprocess.run([tool("virt-xml-validate"), path, schema], capture_output=True, text=True)
    return proc.returncode == 0, proc.stdout + proc.stderr


def assert_valid(element, schema="domain"):
    ok, why = validate(element, schema)
    assert ok, why


def without_datastore(disk):
    """A copy of *disk* without <dataStore> (libvirt 9.0's schema, the one
    Debian 12 ships, predates it)."""
    disk = ET.fromstring(ET.tostring(disk))
    for source in disk.iter("source"):
        for store in source.findall("dataStore"):
            source.remove(store)
    return disk


def qcow2_luks(folder, name, *options, secret_dir=None):
    """A qcow2-luks image made by qemu-img in *folder*, its first 64 KiB
    0x5a as qemu-io wrote them (the secret file goes in *secret_dir*)."""
    path = os.path.join(folder, name)
    secret = qemu_secret(secret_dir or folder, PW)
    opts = ",".join(("encrypt.format=luks", "encrypt.key-secret=sec0", "encrypt.iter-time=10")
                    + options)
    qemu_img("create", "-q", "-f", "qcow2", "--object", secret, "-o", opts,
             path, "4M")
    qemu_io("driver=qcow2,file.filename=%s,encrypt.key-secret=sec0" % path.replace(",", ",,"),
            "write -P 0x5a 0 64k", objects=[secret])
    return path


def check_reads(out, workdir, want=0x5A):
    """The printed -blockdev opens the image in qemu-io and reads *want*;
    a wrong passphrase, or the key-secret option left out, makes it fail."""
    objects, blockdev = image_opts(out["qemu"])
    qemu_io(blockdev, "read -P 0x%02x 0 64k" % want, objects=objects)
    wrong = write_file(os.path.join(workdir, "wrong"), b"not it")
    secret_id = objects[0].split(",")[1]             # id=...
    qemu_io_refused(blockdev, "read 0 64k", objects=["secret,%s,file=%s" % (secret_id, wrong)])
    keyless = ",".join(o for o in blockdev.split(",") if "key-secret=" not in o)
    qemu_io_refused(keyless, "read 0 64k", objects=objects)


def test_qcow2_luks(workdir):
    folder = os.path.join(workdir, "a dir, with comma")
    os.mkdir(folder)
    image = qcow2_luks(folder, "disk.qcow2", secret_dir=workdir)
    passfile = write_file(os.path.join(workdir, "pass word"), PW)
    out = attach(image, passfile)
    assert PW.decode() not in out["text"]
    assert out["qemu"][:2] == ["--object", "secret,id=sec0,file=%s" % passfile]
    assert "file.filename=%s" % image.replace(",", ",,") in out["qemu"][3]
    check_reads(out, workdir)
    disk = out["disk"]
    assert disk.get("type") == "file" and disk.find("driver").get("type") == "qcow2"
    assert disk.find("source").get("file") == image
    enc = disk.find("source/encryption")
    assert enc.get("format") == "luks" and enc.find("secret").get("uuid") == UUID
    assert disk.find("target").attrib == {"dev": "vda", "bus": "virtio"}
    assert out["secret"].find("uuid").text == UUID
    assert_valid(disk)
    assert_valid(out["secret"], "secret")
    disk.remove(disk.find("target"))            # the schema check can fail
    assert not validate(disk)[0]


def test_qcow2_luks_with_file_data_file(workdir):
    # a relative name: qemu-img 7.2 makes it, and QEMU opens it, in the current directory
    image = qcow2_luks(workdir, "disk.qcow2", "data_file=disk.data")
    data = os.path.abspath("disk.data")
    out = attach(image, write_file(os.path.join(workdir, "pw"), PW), "--format", "both")
    assert "data-file.driver=file,data-file.filename=%s" % data in out["qemu"][3]
    check_reads(out, workdir)
    store = out["disk"].find("source/dataStore")
    assert store.get("type") == "file" and store.find("format").get("type") == "raw"
    assert store.find("source").get("file") == data
    assert "# (<dataStore> needs a libvirt that knows it; libvirt 9.0 does not)" in out["text"]
    assert_valid(without_datastore(out["disk"]))


def test_qcow2_luks_with_loop_data_file(workdir, loop_devices):
    backing = os.path.join(workdir, "data.img")
    with open(backing, "wb") as fh:
        fh.truncate(4 << 20)
    dev = loop_devices(backing)
    image = qcow2_luks(workdir, "disk.qcow2", "data_file=%s" % dev)
    out = attach(image, write_file(os.path.join(workdir, "pw"), PW), "--target", "vdb")
    assert "data-file.driver=host_device,data-file.filename=%s" % dev in out["qemu"][3]
    assert "node-name=vdb" in out["qemu"][3] and out["qemu"][-1] == "virtio-blk-pci,drive=vdb"
    check_reads(out, workdir)
    store = out["disk"].find("source/dataStore")
    assert store.get("type") == "block" and store.find("source").get("dev") == dev
    assert out["stderr"].startswith("pyqcrypt: warning: data file %s is a kernel device name"
                                    % dev), out["stderr"]
    assert_valid(without_datastore(out["disk"]))


def test_luks1_volume(workdir):
    vol = cs_format(workdir, "vol.luks", PW)
    secret = qemu_secret(workdir, PW)
    qemu_io("driver=luks,file.filename=%s,key-secret=sec0" % vol, "write -P 0x3c 0 64k",
            objects=[secret])
    out = attach(vol, os.path.join(workdir, "sec0.secret"), "--key-secret-id", "k1")
    assert out["qemu"][3].startswith("driver=luks,node-name=vda,file.driver=file,")
    assert "key-secret=k1" in out["qemu"][3]
    check_reads(out, workdir, 0x3C)
    disk = out["disk"]
    assert disk.find("driver").get("type") == "raw"
    assert disk.find("source/encryption").get("format") == "luks"
    assert_valid(disk)


def test_backing_chain(workdir):
    base = qcow2_luks(workdir, "base.qcow2")
    top = os.path.join(workdir, "top.qcow2")
    secret = qemu_secret(workdir, PW)
    qemu_img("create", "-q", "-f", "qcow2", "--object", secret, "-o",
             "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
             "-b", "base.qcow2", "-F", "qcow2", top)
    out = attach(top, os.path.join(workdir, "sec0.secret"))
    assert "backing.encrypt.key-secret=sec0" in out["qemu"][3]
    check_reads(out, workdir)                   # the base's bytes, through the overlay
    below = out["disk"].find("backingStore")
    assert below.get("type") == "file" and below.find("format").get("type") == "qcow2"
    assert below.find("source").get("file") == base
    assert below.find("source/encryption/secret").get("uuid") == UUID
    assert list(below.find("backingStore")) == []       # the chain ends there
    assert_valid(out["disk"])


def test_what_qemu_cannot_open_is_refused(workdir):
    luks2 = cs_format(workdir, "v2.luks", PW, size=24 << 20,
                      extra=("--type", "luks2", "--pbkdf", "pbkdf2"))
    secret = qemu_secret(workdir, PW)
    proc = qemu_io("driver=luks,file.filename=%s,key-secret=sec0" % luks2, "read 0 512",
                   objects=[secret], check=False)
    assert proc.returncode != 0 and "LUKS version 2 is not supported" in proc.stderr
    proc = cli("attach", luks2)
    assert proc.returncode == 1 and "LUKS version 2 is not supported" in proc.stderr
    assert "convert --keep-ciphertext -O qcow2" in proc.stderr and proc.stdout == ""
    header = os.path.join(workdir, "hdr.img")
    payload = cs_format(workdir, "payload", PW, header=header)
    proc = qemu_io("driver=luks,file.filename=%s,key-secret=sec0" % header, "read 0 512",
                   objects=[secret], check=False)
    assert proc.returncode != 0
    for args in ((header,), ("--header", header, payload)):
        proc = cli("attach", *args)
        assert proc.returncode == 1 and "detached LUKS header" in proc.stderr, proc.stderr
        assert len(proc.stderr.splitlines()) == 1
    for bad in (("--target", "v da"), ("--key-secret-id", "0x"), ("--secret-uuid", "nope")):
        proc = cli("attach", *bad, payload)
        assert proc.returncode == 1 and bad[0] in proc.stderr, proc.stderr


def test_luks1_on_a_block_device(workdir, loop_devices):
    vol = cs_format(workdir, "vol.luks", PW)
    dev = loop_devices(vol)
    secret = qemu_secret(workdir, PW)
    qemu_io("driver=luks,file.driver=host_device,file.filename=%s,key-secret=sec0" % dev,
            "write -P 0x77 0 64k", objects=[secret])
    out = attach(dev, os.path.join(workdir, "sec0.secret"))
    assert "file.driver=host_device,file.filename=%s" % dev in out["qemu"][3]
    check_reads(out, workdir, 0x77)
    disk = out["disk"]
    assert disk.get("type") == "block" and disk.find("source").get("dev") == dev
    assert out["stderr"].startswith("pyqcrypt: warning: image %s is a kernel device name" % dev)
    assert_valid(disk)


def test_plain_image_needs_no_secret(workdir):
    image = os.path.join(workdir, "plain.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", image, "1M")
    qemu_io(image, "write -P 0x11 0 64k", fmt="qcow2")
    proc = cli("attach", "--format", "qemu", image)
    assert proc.returncode == 0 and "--object" not in proc.stdout and "secret" not in proc.stdout
    blockdev = shlex.split(proc.stdout.splitlines()[-1])[1]
    qemu_io(blockdev, "read -P 0x11 0 64k")
    out = attach(image, "unused", "--format", "libvirt")
    assert "secret" not in out and "qemu" not in out and out["disk"].find(".//encryption") is None
    assert_valid(out["disk"])


def test_unreadable_input_is_one_line(workdir):
    junk = write_file(os.path.join(workdir, "junk.qcow2"), b"QFI\xfb" + b"\xff" * 200)
    for path in (junk, os.path.join(workdir, "missing")):
        proc = cli("attach", path)
        assert proc.returncode == 1 and proc.stdout == "", proc.stdout
        assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("pyqcrypt: ")
