# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt measure``: qemu-img measure's syntax and output over
pyqcrypt.measure (the -o options of the output format turned into a
MeasureRequest, the source image opened through image_args)."""

import sys

from ..errors import Error
from . import common, image_args

_LUKS_CIPHER = ("cipher-alg", "cipher-mode", "ivgen-alg", "ivgen-hash-alg")
_LUKS_OPTS = {"key-secret", "hash-alg", "iter-time", "preallocation"} | set(_LUKS_CIPHER)
_QCOW2_OPTS = ({"encrypt.format", "encryption", "encrypt.key-secret", "encrypt.hash-alg",
                "encrypt.iter-time", "cluster_size", "refcount_bits", "compat", "data_file",
                "data_file_raw", "preallocation", "lazy_refcounts", "backing_file", "backing_fmt",
                "extended_l2", "compression_type"} | {"encrypt." + k for k in _LUKS_CIPHER})
_OPTIONS = {"raw": {"preallocation"}, "qcow2": _QCOW2_OPTS, "luks": _LUKS_OPTS,
            "luks2": _LUKS_OPTS | {"sector-size", "pbkdf", "pbkdf-memory", "pbkdf-parallel",
                                   "pbkdf-force-iterations", "label", "uuid"}}


def _key_bytes(opts, prefix, store):
    """The master key length a LUKS header made from these options would
    have; the key secret must exist, as qemu-img builds the header."""
    from ..crypto import CipherSpec
    if prefix + "key-secret" not in opts:
        raise Error("Parameter '%skey-secret' is required for cipher" % prefix)
    store.get(opts[prefix + "key-secret"])
    spec = CipherSpec.from_qemu(*(opts.get(prefix + k, d) for k, d in
                                  zip(_LUKS_CIPHER, ("aes-256", "xts", "plain64", None))))
    return spec.check().key_bytes


def _request(args, opts, store):
    """The MeasureRequest of -O and -o."""
    from ..measure import MeasureRequest
    fmt = args.output_format
    if fmt not in _OPTIONS:
        raise Error("Unknown file format '%s' (pyqcrypt measures raw, qcow2, luks, luks2)" % fmt)
    common.check_options(opts, _OPTIONS[fmt], "format %s" % fmt)
    request = MeasureRequest(fmt)
    request.preallocation = opts.get("preallocation", "off")
    if fmt == "luks":
        request.luks_key_bytes = _key_bytes(opts, "", store)
    elif fmt == "luks2":
        request.luks2_sector_size = common.parse_int(opts.get("sector-size", "0"), "sector-size", 0)
    elif fmt == "qcow2":
        request.cluster_size = common.parse_size(opts.get("cluster_size", "65536"))
        request.refcount_bits = common.parse_int(opts.get("refcount_bits", "16"), "refcount_bits")
        request.extended_l2 = common.parse_bool(opts.get("extended_l2", "off"), "extended_l2")
        request.compat = opts.get("compat", "1.1")
        request.has_backing_file = "backing_file" in opts
        if opts.get("encrypt.format") == "luks":
            request.luks_key_bytes = _key_bytes(opts, "encrypt.", store)
    return request


def cmd_measure(args):
    from ..measure import measure
    from ..secrets import parse_options
    if args.snapshot is not None:
        raise Error("-l %s: pyqcrypt does not read internal snapshots; measure the image "
                    "itself" % args.snapshot)
    if args.size is not None and args.filename is not None:
        raise Error("--size N cannot be used together with a filename.")
    if args.size is None and args.filename is None:
        raise Error("Either --size N or one filename must be specified.")
    opts = {}
    for text in args.options or []:
        opts.update(parse_options(text))
    store = common.secret_store(args)
    try:
        request = _request(args, opts, store)
        if args.filename is None:
            request.size = common.parse_size(args.size)
            result = measure(request)
        else:
            arg = image_args.resolve(args.filename, args.image_opts, args.format, store,
                                     args.force_share)
            with image_args.open_image(arg) as source:
                result = measure(request, source)
    finally:
        store.close()
    sys.stdout.write(result.json() if args.output == "json" else result.human())
    return 0


def register(sub):
    p = common.add_command(
        sub, "measure", "how much space a new image needs (qemu-img measure)",
        "Print qemu-img measure's two figures for an image of format -O (raw, qcow2, luks = "
        "LUKS1, or luks2) made either empty with --size or from FILENAME: 'required size', "
        "the bytes a copy of FILENAME's allocated data needs (metadata of the fully allocated "
        "image included, as qemu-img counts it), and 'fully allocated size'.  qcow2 takes "
        "cluster_size, refcount_bits, extended_l2, compat, preallocation, and encrypt.format=luks "
        "with encrypt.key-secret (the LUKS header is included); luks takes key-secret and the "
        "cipher options; its figure is QEMU's LUKS1 layout (payload right after the keyslots, "
        "2068480 bytes of header for aes-xts-256, as qemu-img create -f luks makes), while "
        "pyqcrypt create -f luks and convert -O luks align the payload to 1 MiB as cryptsetup "
        "does (28672 bytes more for aes-xts-256).  -O luks2 is pyqcrypt's own: cryptsetup's "
        "default 16 MiB LUKS2 header "
        "area plus the payload rounded up to the sector size, the size 'pyqcrypt create -f "
        "luks2' makes.  Encrypted sources are opened with --object and --image-opts.  Internal "
        "snapshots (-l) are refused: pyqcrypt does not read them.",
        ["pyqcrypt measure -O qcow2 --size 10G",
         "pyqcrypt measure --output=json -O qcow2 disk.raw",
         "pyqcrypt measure --object secret,id=s0,file=pass.txt -O qcow2 \\",
         "    -o encrypt.format=luks,encrypt.key-secret=s0 disk.raw",
         "pyqcrypt measure --object secret,id=s0,file=pass.txt -O luks -o key-secret=s0 \\",
         "    --image-opts driver=qcow2,file.filename=disk.qcow2,encrypt.key-secret=s0"])
    p.add_argument("--output", choices=("human", "json"), default="human",
                   help="output format: human (default) or json")
    image_args.add_image_options(p, "the source image's format (default: probed)")
    p.add_argument("-O", dest="output_format", default="raw", metavar="OUTPUT_FMT",
                   help="the format of the image to measure for: raw (default), qcow2, luks, luks2")
    p.add_argument("-o", dest="options", action="append", metavar="OPTIONS",
                   help="options of that format, qemu-img's names (qcow2: cluster_size, "
                        "refcount_bits, extended_l2, compat, preallocation, encrypt.format, "
                        "encrypt.key-secret, encrypt.cipher-alg, ...; luks: key-secret, "
                        "cipher-alg, ...; raw: preallocation)")
    p.add_argument("--size", metavar="N", help="the virtual size of an empty image (k, M, G, ...)")
    p.add_argument("-l", "--snapshot", metavar="SNAPSHOT",
                   help="refused: pyqcrypt does not read internal snapshots")
    p.add_argument("filename", nargs="?", help="the image whose data the new image would hold")
    p.set_defaults(func=cmd_measure)
