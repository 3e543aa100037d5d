# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt info``: what qemu-img info prints, with the same JSON keys.

Works on qcow2 (plain, LUKS, AES), raw LUKS1 volumes and raw files; no
passphrase is needed (only the header is read).
"""

import os
import time

from .units import SECTOR, round_up
from .errors import Error, StorageError
from .locks import lock_image
from .qcow2.open import backing_path
from .storage import Storage


def luks_info(header):
    """QEMU's "encrypt" block for a LUKS1 header."""
    spec = header.spec
    out = {"ivgen-alg": spec.ivgen or "plain64", "hash-alg": header.hash_spec,
           "cipher-alg": spec.qemu_cipher_alg or spec.cipher}
    out["uuid"] = header.uuid
    if spec.ivgen == "essiv":               # QEMU's place for it: after the UUID
        out["ivgen-hash-alg"] = spec.ivgen_hash
    out.update({"format": "luks", "cipher-mode": spec.mode, "slots": []})
    for ks in header.slots:
        slot = {"active": ks.active}
        if ks.active:
            slot["iters"] = ks.iterations
        slot["key-offset"] = ks.km_offset * 512
        if ks.active:
            slot["stripes"] = ks.stripes
        out["slots"].append(slot)
    out["payload-offset"] = header.payload_offset * 512
    out["master-key-iters"] = header.mk_digest_iter
    return out


def image_info(path, force_share=False, format=None):
    """The qemu-img info dictionary for *path*.  Like qemu-img info, a
    qcow2 image is read under the shared "consistent read" lock (refused
    while another process writes it, unless *force_share*), a raw or LUKS
    file under none.  *format* "raw" describes any file as raw bytes (as
    qemu-img info -f raw does); "qcow2" or "luks" must match the file."""
    from .probe import HEAD_BYTES, sniff
    if format == "luks2":
        format = "luks"
    if format not in (None, "qcow2", "luks", "raw"):
        raise Error("unknown image format %r (qcow2, luks, raw)" % (format,))
    with Storage(path) as st:
        try:
            actual = os.fstat(st.fd).st_blocks * 512
        except OSError as exc:
            raise StorageError("cannot stat %s: %s" % (path, exc.strerror or exc)) from None
        # the first bytes, read once through the open file, decide the format
        head = b"" if format == "raw" else st.pread(0, min(HEAD_BYTES, st.size()), "image header")
        probed = sniff(head)
        if format is not None and {"luks2": "luks"}.get(probed, probed) != format:
            raise Error("%s is not in %s format" % (path, format))
        if probed == "qcow2":
            lock_image(st, mode="read", force_share=force_share)
            return _qcow2_info(st, path, actual)
        if probed == "luks2":
            return luks2_info(st, path, st.size(), actual)
        if probed == "luks":
            return _luks1_info(st, path, actual)
        # QEMU's block layer counts whole 512-byte sectors: a file's tail
        # is reported (and read, as zeros past the end) as a whole sector
        return {"virtual-size": round_up(st.size(), SECTOR), "filename": path, "format": "raw",
                "actual-size": actual, "dirty-flag": False}


def _qcow2_info(st, path, actual):
    """qemu-img info of a qcow2 image, keys in qemu-img's order."""
    from .qcow2.compress import compression_name
    from .qcow2.header import CRYPT_AES, CRYPT_LUKS
    from .qcow2.open import fde_area, read_header
    from .qcow2.snapshots import read_snapshots
    h = read_header(st)
    data = {"compat": "1.1" if h.version == 3 else "0.10",
            "compression-type": compression_name(h.compression_type)}
    if h.version == 3:
        data["lazy-refcounts"] = bool(h.compatible_features & 1)
    data["refcount-bits"] = h.refcount_bits
    if h.has_data_file:
        data["data-file"] = h.data_file
        data["data-file-raw"] = h.data_file_raw
    if h.crypt_method == CRYPT_LUKS:
        data["encrypt"] = luks_info(fde_area(st, h).header)
    elif h.crypt_method == CRYPT_AES:
        data["encrypt"] = {"format": "aes"}
    if h.version == 3:
        data["corrupt"] = bool(h.incompatible_features & 2)
        data["extended-l2"] = h.extended_l2
    info = {}
    if h.backing_file and h.backing_format:
        info["backing-filename-format"] = h.backing_format
    snapshots = read_snapshots(st, h)
    if snapshots:
        info["snapshots"] = [sn.info() for sn in snapshots]
    info.update({"virtual-size": h.size, "filename": path, "cluster-size": h.cluster_size,
                 "format": "qcow2", "actual-size": actual,
                 "format-specific": {"type": "qcow2", "data": data}})
    if h.backing_file:
        info["full-backing-filename"] = backing_path(path, h.backing_file)
    if h.crypt_method:
        info["encrypted"] = True
    if h.backing_file:
        info["backing-filename"] = h.backing_file
    info["dirty-flag"] = bool(h.incompatible_features & 1)
    return info


def _luks1_info(st, path, actual):
    """qemu-img info of a raw LUKS1 volume."""
    from .luks.area import open_area
    area = open_area(path, force_share=True)     # qemu-img info locks no raw file
    try:
        hdr = area.header
        # qemu-img counts whole sectors, rounding a partial last one up
        size = round_up(max(0, st.size() - hdr.payload_offset * SECTOR), SECTOR)
        data = luks_info(hdr)
        del data["format"]              # implied by the driver, as qemu-img prints it
        return {"virtual-size": max(0, size), "filename": path, "format": "luks",
                "actual-size": actual,
                "format-specific": {"type": "luks", "data": data},
                "encrypted": True, "dirty-flag": False}
    finally:
        area.close()


def chain_info(path, force_share=False, limit=64, format=None):
    """qemu-img info --backing-chain: the info of *path* (read as *format*,
    see image_info) and of every image below it, top first.  A missing
    backing file is an error naming it."""
    out = [image_info(path, force_share, format)]
    while "full-backing-filename" in out[-1]:
        below = out[-1]["full-backing-filename"]
        if len(out) > limit:
            raise Error("%s: the backing chain is deeper than %d images" % (path, limit))
        if not os.path.exists(below):
            raise Error("%s: cannot open its backing file %s: No such file or directory"
                        % (out[-1]["filename"], below))
        out.append(image_info(below, force_share))
    return out


def luks2_info(st, path, size, actual):
    """A LUKS2 volume as pyqcrypt sees it (QEMU cannot read LUKS2, so
    there is no qemu-img layout to follow): the keys of qemu-img's luks
    block where they mean the same (cipher-alg, cipher-mode, ivgen-alg,
    payload-offset, uuid, slots), plus what only LUKS2 has (sector size,
    IV tweak, segment size, key derivation per keyslot, requirements).
    A volume pyqcrypt refuses to open is still described; "readable" says
    whether it opens, and "refused" why not."""
    from .luks.luks2 import checked_segment, luks2_device, read_header_metadata, segment_spec
    from .luks.luks2_meta import segment_length
    meta = read_header_metadata(st)
    data = {"version": 2}
    virtual = 0
    try:
        with luks2_device(path) as (ffi, lib, cd):
            seg = checked_segment(meta, ffi, lib, cd)
            spec = segment_spec(seg, lib.crypt_get_volume_key_size(cd), path)
        virtual = segment_length(seg, size, path)
        data.update({"cipher-alg": spec.qemu_cipher_alg, "cipher-mode": spec.mode,
                     "ivgen-alg": spec.ivgen or "none"})
        if spec.ivgen_hash:
            data["ivgen-hash-alg"] = spec.ivgen_hash
        data.update({"sector-size": seg.sector_size, "iv-tweak": seg.iv_tweak,
                     "payload-offset": seg.offset,
                     "segment-size": "dynamic" if seg.size is None else seg.size,
                     "readable": True})
    except Error as exc:
        data.update({"readable": False, "refused": str(exc)})
    data["uuid"] = meta.uuid
    if meta.label:
        data["label"] = meta.label
    if meta.requirements:
        data["requirements"] = ", ".join(meta.requirements)
    data["slots"] = [{"keyslot": n, "active": True, "type": k.type or "?",
                      "kdf": k.kdf or "none",
                      "key-bits": k.key_size * 8 if isinstance(k.key_size, int) else 0}
                     for n, k in sorted(meta.keyslots.items())]
    return {"virtual-size": virtual, "filename": path, "format": "luks2",
            "actual-size": actual, "format-specific": {"type": "luks2", "data": data},
            "encrypted": True, "dirty-flag": False}


def size_text(n):
    """qemu's size_to_str: three significant digits and a binary suffix."""
    suffixes = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    i = 0
    value = float(n)
    while value >= 1024 * 0.9995 and i < len(suffixes) - 1 and value >= 1024:
        value /= 1024
        i += 1
    if i == 0:
        return "%d B" % n
    return "%0.3g %s" % (value, suffixes[i])


def _human_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _human_dict(d, indent, out):
    for key, value in d.items():
        label = key.replace("-", " ")
        if isinstance(value, dict):
            out.append("%s%s:" % (" " * indent, label))
            _human_dict(value, indent + 4, out)
        elif isinstance(value, list):
            out.append("%s%s:" % (" " * indent, label))
            for i, item in enumerate(value):
                out.append("%s[%d]:" % (" " * (indent + 4), i))
                _human_dict(item, indent + 8, out)
        else:
            out.append("%s%s: %s" % (" " * indent, label, _human_value(value)))


def human(info):
    out = ["image: %s" % info["filename"], "file format: %s" % info["format"],
           "virtual size: %s (%d bytes)" % (size_text(info["virtual-size"]), info["virtual-size"]),
           "disk size: %s" % size_text(info["actual-size"])]
    if info.get("encrypted"):
        out.append("encrypted: yes")
    if "cluster-size" in info:
        out.append("cluster_size: %d" % info["cluster-size"])
    if "backing-filename" in info:
        name, full = info["backing-filename"], info["full-backing-filename"]
        out.append("backing file: %s%s" % (name, "" if full == name else
                                           " (actual path: %s)" % full))
        if "backing-filename-format" in info:
            out.append("backing file format: %s" % info["backing-filename-format"])
    if info.get("snapshots"):
        out.append("Snapshot list:")
        out.extend(snapshot_lines(info["snapshots"]))
    spec = info.get("format-specific")
    if spec:
        out.append("Format specific information:")
        _human_dict(spec["data"], 4, out)
    return "\n".join(out) + "\n"


def snapshot_lines(snapshots):
    """qemu-img's snapshot table (bdrv_snapshot_dump): a heading and one
    line per snapshot of the JSON "snapshots" array; dates in local time."""
    lines = ["%-10s%-17s%8s%20s%13s%11s" % ("ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT")]
    for sn in snapshots:
        date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sn["date-sec"]))
        secs = sn["vm-clock-sec"]
        clock = "%02d:%02d:%02d.%03d" % (secs // 3600, secs // 60 % 60, secs % 60,
                                         sn["vm-clock-nsec"] // 1000000)
        icount = "%d" % sn["icount"] if "icount" in sn else ""
        lines.append("%-9s %-16s %8s%20s%13s%11s" % (sn["id"], sn["name"],
                                                     size_text(sn["vm-state-size"]), date, clock,
                                                     icount))
    return lines


def as_json(info):
    import json
    return json.dumps(info, indent=4) + "\n"
