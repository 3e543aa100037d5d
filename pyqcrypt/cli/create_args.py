# SPDX-License-Identifier: LGPL-2.1-or-later
"""The arguments of ``create`` and ``amend`` (qemu-img's syntax); the
commands themselves are in qemu_cmds."""

from . import common


def register_create(sub, cmd_create):
    """``create``'s arguments; *cmd_create* runs it."""
    p = common.add_command(
        sub, "create", "create a new image (qemu-img create)",
        "Create a new image with qemu-img create's syntax and option names: a qcow2 image "
        "(plain, LUKS-encrypted with -o encrypt.format=luks, or an overlay with -b) or, with "
        "-f luks, a raw LUKS1 volume (-o header=PATH for a detached header), or with -f luks2 "
        "a LUKS2 volume through libcryptsetup (also -o sector-size, pbkdf, pbkdf-memory, "
        "pbkdf-parallel, pbkdf-force-iterations, label), or with -f raw (the default) a raw "
        "file as qemu-img makes it.  An existing file is never replaced (qemu-img create "
        "truncates it): remove it first.",
        ["pyqcrypt create -f qcow2 disk.qcow2 10G",
         "pyqcrypt create -f qcow2 --object secret,id=s0,file=pass.txt \\",
         "    -o encrypt.format=luks,encrypt.key-secret=s0 disk.qcow2 10G",
         "pyqcrypt create -f luks --object secret,id=s0,file=pass.txt -o key-secret=s0 vol.luks 1G",
         "pyqcrypt create -f luks2 --object secret,id=s0,file=pass.txt \\",
         "    -o key-secret=s0,sector-size=4096 vol.luks2 1G",
         "pyqcrypt create -f qcow2 -b base.qcow2 -F qcow2 overlay.qcow2"])
    p.add_argument("-f", "--format", metavar="FMT",
                   help="image format: raw (the default: a sparse file, -o preallocation=off|"
                        "falloc|full), qcow2, luks (LUKS1) or luks2")
    common.add_object_option(p)
    p.add_argument("-o", dest="options", action="append", metavar="OPTIONS",
                   help="format options, qemu-img's names, comma-separated: qcow2: "
                        "encrypt.format=luks, encrypt.key-secret=ID, encrypt.cipher-alg, "
                        "cluster_size, data_file, extended_l2, ...; luks: key-secret=ID, "
                        "cipher-alg, iter-time, header, ...; -o help (or ?) lists the format's "
                        "options as qemu-img does, marking those pyqcrypt refuses or limits.  "
                        "data_file=, header= or -b given as a kernel device name (/dev/sdb1, "
                        "/dev/loop0, /dev/nvme0n1p2, ...), which may name another disk after a "
                        "reboot, is stored as given with a warning naming the device's "
                        "/dev/disk/by-id (or by-partuuid, by-uuid, by-path) link, if any")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.add_argument("-b", dest="backing", metavar="BACKING",
                   help="make an overlay over BACKING (a relative name is found from the new "
                        "image's directory); SIZE defaults to the backing image's")
    p.add_argument("-F", dest="backing_format", metavar="FMT",
                   help="the backing image's format (qcow2, luks or raw); required with -b")
    p.add_argument("-u", dest="unsafe", action="store_true",
                   help="with -b and a SIZE: do not open the backing file (it may not exist yet)")
    p.add_argument("--allow-insecure", action="store_true",
                   help="allow creating legacy qcow2 AES images (weak; for compatibility only)")
    p.add_argument("filename", nargs="?", help="the new image (must not exist)")
    p.add_argument("size", nargs="?",
                   help="virtual size in bytes or with a suffix: 512M, 10G (k, M, G, T, P, E)")
    p.set_defaults(func=cmd_create)


def register_amend(sub, cmd_amend):
    """``amend``'s arguments; *cmd_amend* runs it."""
    p = common.add_command(
        sub, "amend", "add or remove keyslots (qemu-img amend)",
        "Add or remove passphrases of a qcow2-luks image or LUKS1 volume with qemu-img amend's "
        "keyslot options: encrypt.state=active|inactive, encrypt.keyslot, encrypt.new-secret, "
        "encrypt.old-secret, encrypt.iter-time on qcow2 (the same without encrypt. on a luks "
        "image).  As in qemu-img, the image is opened with its own secret first (--image-opts "
        "with [encrypt.]key-secret), a named keyslot must hold old-secret when one is given, "
        "and old-secret with state=active, or new-secret or iter-time with state=inactive, are "
        "refused.",
        ["pyqcrypt amend --object secret,id=old,file=old.txt --object secret,id=new,file=new.txt \\",
         "    --image-opts driver=qcow2,file.filename=disk.qcow2,encrypt.key-secret=old \\",
         "    -o encrypt.state=active,encrypt.new-secret=new",
         "pyqcrypt amend --object secret,id=old,file=old.txt \\",
         "    --image-opts driver=qcow2,file.filename=disk.qcow2,encrypt.key-secret=old \\",
         "    -o encrypt.state=inactive,encrypt.old-secret=old"])
    p.add_argument("-f", "--format", metavar="FMT",
                   help="the image's format: qcow2 or luks; an image of another format is refused")
    common.add_object_option(p)
    p.add_argument("--image-opts", action="store_true",
                   help="FILENAME is driver=...,file.filename=PATH,[encrypt.]key-secret=ID")
    p.add_argument("-o", dest="options", action="append", metavar="OPTIONS", required=True,
                   help="the change: encrypt.state=active|inactive with encrypt.keyslot=N, "
                        "encrypt.new-secret=ID, encrypt.old-secret=ID, encrypt.iter-time=MS; "
                        "-o help lists the format's amend options (-f FMT or an image needed)")
    p.add_argument("--force", action="store_true",
                   help="overwrite an active keyslot, or erase the last one (data lost for good)")
    p.add_argument("-p", dest="progress", action="store_true",
                   help="show progress as qemu-img does (0 before the change, 100 after)")
    common.add_cache_option(p, "-t", "cache", source=False)
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.add_argument("filename", nargs="?", help="the image, or its options with --image-opts")
    p.set_defaults(func=cmd_amend)
