# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt attach``: how to give an image to a virtual machine.

From an image's headers alone (no passphrase is read) this module writes
the libvirt ``<disk>`` element (with ``<dataStore>`` for a qcow2 external
data file, ``<encryption>`` for LUKS layers and the ``<backingStore>``
chain), the libvirt secret that holds the passphrase, and the QEMU
``--object secret`` / ``-blockdev`` options that open the same chain.
XML is built with xml.etree, so any path is escaped; QEMU option values
have their commas doubled and every argument is quoted for the shell.

What QEMU 7.2 cannot open is refused with what to do instead: LUKS2
volumes ("LUKS version 2 is not supported"), detached LUKS headers (its
luks driver reads the header from the payload device) and legacy AES
qcow2 images (refused by QEMU's system emulators).
"""

import os
import re
import shlex
import stat
import uuid
import xml.etree.ElementTree as ET
from typing import List

from .errors import Error

_TARGET = re.compile(r"^[a-z]{1,8}[a-z0-9]{0,8}$")
_QEMU_ID = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,30}$")
FORMATS = ("libvirt", "qemu", "both")
_CONVERT = ("pyqcrypt convert --keep-ciphertext -O qcow2 (the same ciphertext, in a qcow2-luks "
            "image QEMU 7.2 opens)")


class AttachRequest:
    """What to print: *format* (libvirt, qemu or both), the libvirt
    *secret_uuid* (None: a new random one), the guest *target* device, the
    QEMU *key_secret_id* and the *passphrase_file* the secret reads."""

    __slots__ = ("format", "secret_uuid", "target", "key_secret_id", "passphrase_file")

    def __init__(self, format="both", secret_uuid=None, target="vda", key_secret_id="sec0",
                 passphrase_file=None):
        self.format = format
        self.secret_uuid = secret_uuid
        self.target = target
        self.key_secret_id = key_secret_id
        self.passphrase_file = passphrase_file

    def check(self):
        """The request with its values checked (and a secret UUID made)."""
        if self.format not in FORMATS:
            raise Error("--format must be one of %s" % ", ".join(FORMATS))
        if not _TARGET.match(self.target):
            raise Error("--target %r is not a guest disk name such as vda or sdb" % self.target)
        if not _QEMU_ID.match(self.key_secret_id):
            raise Error("--key-secret-id %r is not a QEMU id (a letter, then letters, digits, "
                        "'-', '.', '_')" % self.key_secret_id)
        try:
            self.secret_uuid = str(uuid.UUID(self.secret_uuid)) if self.secret_uuid \
                else str(uuid.uuid4())
        except ValueError:
            raise Error("--secret-uuid %r is not a UUID" % self.secret_uuid) from None
        return self


class Layer:
    """One image of the chain: its absolute *path*, *format* (qcow2, luks
    or raw), whether it is *encrypted* (LUKS), its qcow2 external
    *data_file* (absolute, or None), and whether path and data file are
    block devices."""

    __slots__ = ("path", "format", "encrypted", "data_file", "block", "data_block")

    def __init__(self, path, format, encrypted=False, data_file=None):
        self.path = path
        self.format = format
        self.encrypted = encrypted
        self.data_file = data_file
        self.block = _is_block(path)
        self.data_block = _is_block(data_file) if data_file else False


def _is_block(path) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except FileNotFoundError:
        return False            # a missing data file: QEMU will say so when it opens it


def _layer(info) -> Layer:
    """The Layer of one image_info dictionary, or Error for what QEMU 7.2
    cannot open."""
    path = os.path.abspath(info["filename"])
    fmt = info["format"]
    data = info.get("format-specific", {}).get("data", {})
    if fmt == "luks2":
        raise Error("%s is a LUKS2 volume, which QEMU 7.2 cannot open (its luks driver says "
                    "\"LUKS version 2 is not supported\"); convert it with %s, or open it with "
                    "cryptsetup open and attach /dev/mapper/NAME as a raw block device"
                    % (path, _CONVERT))
    if fmt == "luks" and data.get("payload-offset") == 0:
        raise Error("%s is a detached LUKS header (its payload offset is 0); QEMU 7.2's luks "
                    "driver reads the header from the payload itself and has no option for a "
                    "separate one: convert it with %s" % (path, _CONVERT))
    encrypt = data.get("encrypt", {}).get("format")
    if encrypt == "aes":
        raise Error("%s uses legacy qcow2 AES encryption, which QEMU 7.2's system emulators "
                    "refuse; convert it to qcow2-luks (pyqcrypt convert -O qcow2 -o "
                    "encrypt.format=luks,encrypt.key-secret=ID)" % path)
    data_file = None
    if data.get("data-file"):
        from types import SimpleNamespace
        from .qcow2.open import data_file_path
        # a relative name: beside the image, else (as QEMU 7.2 looks) in the current directory
        data_file = os.path.abspath(data_file_path(path, SimpleNamespace(data_file=data["data-file"])))
    return Layer(path, fmt, fmt == "luks" or encrypt == "luks", data_file)


def describe_chain(path, header=None) -> List[Layer]:
    """The Layers of *path* and its backing chain, top first."""
    from .info_report import chain_info
    if header is not None:
        raise Error("a detached LUKS header (%s) cannot be given to QEMU 7.2: its luks driver "
                    "has no option for one; convert the volume with %s, e.g. --image-opts "
                    "driver=luks,file.filename=%s,header=%s,key-secret=ID" % (
                        header, _CONVERT, path, header))
    return [_layer(info) for info in chain_info(path, force_share=True)]


# -- libvirt -----------------------------------------------------------------

def _source(parent, layer, secret_uuid):
    """<source> of *layer* under *parent*, with its dataStore and encryption."""
    source = ET.SubElement(parent, "source", {"dev" if layer.block else "file": layer.path})
    if layer.data_file:
        store = ET.SubElement(source, "dataStore", type="block" if layer.data_block else "file")
        ET.SubElement(store, "format", type="raw")
        ET.SubElement(store, "source", {"dev" if layer.data_block else "file": layer.data_file})
    if layer.encrypted:
        enc = ET.SubElement(source, "encryption", format="luks", engine="qemu")
        ET.SubElement(enc, "secret", type="passphrase", uuid=secret_uuid)
    return source


def _qemu_type(layer):
    """The format libvirt names: qcow2, or raw (a LUKS volume is raw plus
    <encryption format='luks'>)."""
    return "qcow2" if layer.format == "qcow2" else "raw"


def disk_element(layers: List[Layer], request: AttachRequest) -> ET.Element:
    """libvirt's <disk> for the chain *layers* (top first)."""
    top = layers[0]
    disk = ET.Element("disk", type="block" if top.block else "file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type=_qemu_type(top))
    _source(disk, top, request.secret_uuid)
    parent = disk
    for layer in layers[1:]:
        parent = ET.SubElement(parent, "backingStore", type="block" if layer.block else "file")
        ET.SubElement(parent, "format", type=_qemu_type(layer))
        _source(parent, layer, request.secret_uuid)
    ET.SubElement(parent, "backingStore")           # the end of the chain
    ET.SubElement(disk, "target", dev=request.target, bus="virtio")
    return disk


def secret_element(layers: List[Layer], request: AttachRequest) -> ET.Element:
    """The libvirt <secret> (a volume secret, kept private) the disk's
    <encryption> refers to."""
    secret = ET.Element("secret", ephemeral="no", private="yes")
    ET.SubElement(secret, "uuid").text = request.secret_uuid
    ET.SubElement(secret, "description").text = "passphrase of %s" % layers[0].path
    usage = ET.SubElement(secret, "usage", type="volume")
    ET.SubElement(usage, "volume").text = layers[0].path
    return secret


def xml_text(element: ET.Element) -> str:
    """*element* as indented XML text (no declaration)."""
    ET.indent(element, "  ")
    return ET.tostring(element, encoding="unicode")


# -- QEMU --------------------------------------------------------------------

def _value(text) -> str:
    """A QEMU option value: commas doubled (QEMU's escape)."""
    return str(text).replace(",", ",,")


def blockdev_options(layers: List[Layer], request: AttachRequest) -> List[str]:
    """The -blockdev key=value options that open *layers*: the top one
    fully described, the layers below through ``backing.`` prefixes (QEMU
    opens them by the names their overlays record) with their secrets."""
    top = layers[0]
    opts = ["driver=" + ("qcow2" if top.format == "qcow2" else "luks" if top.encrypted else "raw"),
            "node-name=" + request.target]
    prefix = ""
    for depth, layer in enumerate(layers):
        if depth == 0:
            opts += ["file.driver=" + ("host_device" if layer.block else "file"),
                     "file.filename=" + _value(layer.path)]
        if layer.encrypted:
            opts.append("%s%s=%s" % (prefix, "encrypt.key-secret" if layer.format == "qcow2"
                                     else "key-secret", request.key_secret_id))
        if layer.data_file:
            opts += ["%sdata-file.driver=%s" % (prefix, "host_device" if layer.data_block
                                                else "file"),
                     "%sdata-file.filename=%s" % (prefix, _value(layer.data_file))]
        prefix += "backing."
    return opts


def qemu_arguments(layers: List[Layer], request: AttachRequest) -> List[str]:
    """QEMU's command-line arguments: the secret object (when a layer is
    encrypted), the -blockdev and a virtio disk on it."""
    args = []
    if any(layer.encrypted for layer in layers):
        args += ["--object", "secret,id=%s,file=%s" % (
            request.key_secret_id, _value(request.passphrase_file or "PASSPHRASE_FILE"))]
    args += ["-blockdev", ",".join(blockdev_options(layers, request)),
             "-device", "virtio-blk-pci,drive=%s" % request.target]
    return args


def render(layers: List[Layer], request: AttachRequest) -> str:
    """Everything ``pyqcrypt attach`` prints for the chain *layers* (from
    describe_chain) and a checked *request*."""
    encrypted = any(layer.encrypted for layer in layers)
    passfile = request.passphrase_file or "PASSPHRASE_FILE"
    out = []
    if request.format in ("libvirt", "both"):
        if encrypted:
            out += ["# libvirt secret: save as secret.xml, then run",
                    "#   virsh secret-define secret.xml",
                    "#   virsh secret-set-value --secret %s --file %s --plain"
                    % (request.secret_uuid, shlex.quote(passfile)),
                    xml_text(secret_element(layers, request))]
        out.append("# libvirt disk: put it inside the domain's <devices>")
        if any(layer.data_file for layer in layers):
            out.append("# (<dataStore> needs a libvirt that knows it; libvirt 9.0 does not)")
        out.append(xml_text(disk_element(layers, request)))
    if request.format in ("qemu", "both"):
        out.append("# QEMU")
        out.append(" ".join(shlex.quote(arg) for arg in qemu_arguments(layers, request)))
    return "\n".join(out) + "\n"

