# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt attach IMAGE``: the libvirt disk XML (and its secret) and
the QEMU -blockdev options that give IMAGE to a virtual machine; the
work is in pyqcrypt.attach."""

import sys

from . import common


def cmd_attach(args):
    from ..attach import AttachRequest, describe_chain, render
    from ..device_names import warn_unstable
    request = AttachRequest(args.output, args.secret_uuid, args.target, args.key_secret_id,
                            args.passphrase_file).check()
    layers = describe_chain(args.image, args.header)
    for layer in layers:
        warn_unstable(layer.path, "image")
        warn_unstable(layer.data_file, "data file")
    sys.stdout.write(render(layers, request))
    return 0


def register(sub):
    """Add ``attach`` to the parser *sub*."""
    p = common.add_command(
        sub, "attach", "print the libvirt disk XML and QEMU options that attach an image",
        "Print how to give IMAGE to a virtual machine: the libvirt <disk> element (a LUKS "
        "volume as type='raw' with <encryption format='luks'>, a qcow2 external data file as "
        "<dataStore>, the backing chain as <backingStore>), the libvirt secret holding the "
        "passphrase with the virsh commands that define it and load it from a file, and the "
        "QEMU --object secret / -blockdev options that open the same chain (the secret is "
        "read from --passphrase-file; the passphrase itself is never read or printed).  Only "
        "headers are read.  What QEMU 7.2 cannot open is refused with what to do instead: "
        "LUKS2 volumes, detached LUKS headers, legacy AES qcow2 images.  A path given by a "
        "kernel device name (/dev/sdb1, /dev/loop0) draws a warning naming its stable "
        "/dev/disk/by-* link.",
        ["pyqcrypt attach --passphrase-file /etc/vm/pass disk.qcow2",
         "pyqcrypt attach --format qemu --key-secret-id s0 --passphrase-file pass vol.luks",
         "pyqcrypt attach --format libvirt --target vdb \\",
         "    --secret-uuid 0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f disk.qcow2"])
    p.add_argument("--format", dest="output", default="both", choices=("libvirt", "qemu", "both"),
                   help="what to print: the libvirt XML, the QEMU options, or both (the default)")
    p.add_argument("--secret-uuid", metavar="UUID",
                   help="the libvirt secret's UUID (default: a new random one)")
    p.add_argument("--target", default="vda", metavar="DEV",
                   help="the guest's disk name (default vda; also the QEMU node name)")
    p.add_argument("--key-secret-id", default="sec0", metavar="ID",
                   help="the QEMU secret object's id (default sec0)")
    p.add_argument("--passphrase-file", metavar="PATH",
                   help="the file QEMU and virsh read the passphrase from (named, never read "
                        "here; default: the placeholder PASSPHRASE_FILE)")
    p.add_argument("--header", metavar="HDR",
                   help="IMAGE's detached LUKS header: refused with what to do instead (QEMU "
                        "7.2 cannot use one)")
    p.add_argument("image", metavar="IMAGE", help="the image (qcow2, LUKS1 volume or raw)")
    p.set_defaults(func=cmd_attach)
