# SPDX-License-Identifier: LGPL-2.1-or-later
"""An image argument as qemu-img takes one, for the verbs that read
images (compare, map, measure, info, check): a filename, a ``json:{...}``
filename, or with ``--image-opts`` a ``driver=...,file.filename=...``
list; secrets defined by ``--object``; ``-f``; ``-U``.  ``resolve`` turns
one into an ``ImageArg``, what ``pyqcrypt.open`` needs, and ``open_image``
opens it.

Per-driver keys: qcow2 takes ``encrypt.key-secret`` (and
``encrypt.format``), luks takes ``key-secret`` and ``header``; every
driver takes ``backing.[backing.…][encrypt.]key-secret`` for the layers of
a chain.  Anything else is refused by name, never ignored.
"""

from ..errors import Error
from . import common

IMAGE_OPTS = {"qcow2": {"encrypt.key-secret", "encrypt.format"},
              "luks": {"key-secret", "header"},
              "luks2": {"key-secret", "header"},
              "raw": set()}


class ImageArg:
    """One image to open: *path*, its *format* (None: probe), the
    *passphrase* (a Secret or None), a detached *header*, the
    *backing_passphrase* list of a chain, and *force_share* (-U)."""

    __slots__ = ("path", "format", "passphrase", "header", "backing_passphrase", "force_share")

    def __init__(self, path, format=None, passphrase=None, header=None, backing_passphrase=None,
                 force_share=False):
        self.path = path
        self.format = format
        self.passphrase = passphrase
        self.header = header
        self.backing_passphrase = backing_passphrase
        self.force_share = force_share

    def __repr__(self):                 # never the secrets
        return "<ImageArg %s format=%s>" % (self.path, self.format)


def add_image_options(p, format_help="the image's format (default: probed)"):
    """--object, --image-opts, -f and -U, as qemu-img spells them."""
    common.add_object_option(p)
    p.add_argument("--image-opts", action="store_true",
                   help="the image arguments are option lists: driver=qcow2|luks|raw,"
                        "file.filename=PATH,... (secrets: encrypt.key-secret=ID for qcow2, "
                        "key-secret=ID for luks)")
    p.add_argument("-f", "--format", dest="format", metavar="FMT",
                   help=format_help + " (qcow2, luks, luks2 or raw)")
    p.add_argument("-U", "--force-share", action="store_true",
                   help="open without QEMU's lock, e.g. while a QEMU is writing the image "
                        "(what is read may be inconsistent)")


class _NoSecrets:
    """A secret store for what opens no key (qemu-img info): every id
    resolves to None, known or not, as qemu-img info never looks one up."""

    @staticmethod
    def get(_ident):
        return None


NO_SECRETS = _NoSecrets()


def resolve(text, image_opts, fmt, store, force_share=False):
    """The ImageArg of the image argument *text*; *fmt* is -f (with
    --image-opts, driver= gives it); secrets come from *store*
    (``NO_SECRETS``: none are looked up)."""
    if image_opts and fmt is not None:
        raise Error("--image-opts and --format are mutually exclusive")
    if fmt is not None and fmt not in IMAGE_OPTS:
        raise Error("unknown format %r (pyqcrypt reads %s)" % (fmt, ", ".join(IMAGE_OPTS)))
    opts = common.image_options(text, image_opts)
    if opts is None:
        return ImageArg(text, fmt, force_share=force_share)
    path = opts.pop("file.filename", None)
    if not path:
        raise Error("%s needs file.filename=PATH" % ("--image-opts" if image_opts else "json:"))
    driver = opts.pop("driver", None)
    if fmt is not None and driver is not None and fmt != driver:
        raise Error("-f %s and driver=%s disagree" % (fmt, driver))
    fmt = fmt or driver
    backing = common.pop_backing_secrets(opts, store)
    common.check_options(opts, IMAGE_OPTS.get(fmt, set().union(*IMAGE_OPTS.values())),
                         "the image options (driver=%s)" % fmt)
    sid = opts.get("key-secret") or opts.get("encrypt.key-secret")
    header = opts.get("header")
    if header is not None and fmt is None:
        fmt = "luks"
    return ImageArg(path, fmt, store.get(sid) if sid else None, header, backing, force_share)


def open_image(arg, writable=False):
    """The image an ImageArg names (``pyqcrypt.image.open_image``: the
    format's own object, as the verbs need it)."""
    from .. import image
    return image.open_image(arg.path, arg.passphrase, writable=writable, header=arg.header,
                    format=arg.format, force_share=arg.force_share,
                    backing_passphrase=arg.backing_passphrase)


def display_name(text, image_opts):
    """The name qemu-img shows for the image argument *text* (info's
    "image:"): the filename itself, or for an option list that carries
    more than driver and file.filename (a secret, a header) its
    ``json:{...}`` form, keys in the order of QEMU's QDict, as QEMU
    spells it."""
    from ..qcow2.check_report import _qdict_bucket, qemu_json_string
    opts = common.image_options(text, image_opts)
    if opts is None:
        return text
    path = opts.get("file.filename", "")
    rest = {k: v for k, v in opts.items() if k not in ("driver", "file.filename")}
    if not rest:
        return path
    file_obj = '{"driver": "file", "filename": %s}' % qemu_json_string(path)
    items = [(k, qemu_json_string(v)) for k, v in rest.items()]
    if "driver" in opts:
        items.append(("driver", qemu_json_string(opts["driver"])))
    items.append(("file", file_obj))
    items.sort(key=lambda kv: _qdict_bucket(kv[0]))
    return "json:{" + ", ".join("%s: %s" % (qemu_json_string(k), v) for k, v in items) + "}"
