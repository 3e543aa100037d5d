# SPDX-License-Identifier: LGPL-2.1-or-later
"""``compare --ciphertext``: the stored ciphertext of a keep-ciphertext
pair, a LUKS1 or LUKS2 volume and a qcow2-luks image whose raw data file
holds the same sectors (``convert --keep-ciphertext`` makes such pairs),
compared without a passphrase.

Owns finding each side's ciphertext (the LUKS payload from its payload
offset; the qcow2 data file from offset 0, as long as the virtual size),
the check that both headers describe the same key (LUKS1: cipher, key
size, hash and master key digest with its salt and iterations, which a
keep-ciphertext copy keeps byte for byte; LUKS2, whose digest has another
form: cipher, key size, sector size and UUID), and the byte comparison
(conversion/compare.py).  Offsets in messages are guest offsets.
"""

from .conversion.compare import first_difference
from .errors import Error
from .locks import lock_image
from .luks.magic import luks_version
from .storage import Storage
from .units import SECTOR


class _Side:
    """One side: *data* (a Storage) holding ciphertext from *start* for
    *length* bytes, and the *key* facts its header records."""

    def __init__(self, data, start, length, key, owned):
        self.data, self.start, self.length, self.key = data, start, length, key
        self.owned = owned
        self.is_qcow2 = False

    def close(self):
        for st in self.owned:
            st.close()


def _luks_side(path, force_share):
    st = Storage(path)
    try:
        lock_image(st, mode="read", force_share=force_share)
        if luks_version(path) == 2:
            from .luks.luks2 import read_header_metadata
            from .luks.luks2_meta import segment_length
            meta = read_header_metadata(st)
            seg = next((s for s in meta.segments if s.type == "crypt"), None)
            if seg is None:
                raise Error("%s has no encrypted data segment" % path)
            sizes = sorted({k.key_size for k in meta.keyslots.values()})
            key = {"cipher": seg.encryption, "key size": sizes[0] if len(sizes) == 1 else sizes,
                   "sector size": seg.sector_size, "UUID": meta.uuid}
            return _Side(st, seg.offset, segment_length(seg, st.size(), path), key, [st])
        from .luks.header import LuksHeader
        hdr = LuksHeader.parse(st.pread(0, 592, "LUKS header"), path=path)
        start = hdr.payload_offset * SECTOR
        length = st.size() - start
        if length <= 0:
            raise Error("%s: its header puts the payload at byte %d, past its end" % (path, start))
        return _Side(st, start, length - length % SECTOR, _luks1_key(hdr), [st])
    except BaseException:
        st.close()
        raise


def _luks1_key(hdr):
    return {"cipher": "%s-%s" % (hdr.cipher_name, hdr.cipher_mode), "key size": hdr.key_bytes,
            "hash": hdr.hash_spec, "master key digest": hdr.mk_digest.hex(),
            "digest salt": hdr.mk_digest_salt.hex(), "digest iterations": hdr.mk_digest_iter,
            "sector size": SECTOR, "UUID": hdr.uuid}


def _qcow2_side(path, force_share):
    from .qcow2.header import CRYPT_LUKS
    from .qcow2.open import data_file_path, fde_area, read_header
    st = Storage(path)
    owned = [st]
    try:
        lock_image(st, mode="read", force_share=force_share)
        h = read_header(st)
        if h.crypt_method != CRYPT_LUKS or not (h.has_data_file and h.data_file_raw):
            raise Error("%s is not a qcow2-luks image with a raw data file (data_file_raw=on): "
                        "its ciphertext is not stored as a LUKS payload" % path)
        hdr = fde_area(st, h).header
        data = Storage(data_file_path(path, h))
        owned.append(data)
        lock_image(data, mode="read", force_share=force_share)
        length = min(h.size, data.size())
        side = _Side(data, 0, length, _luks1_key(hdr), owned)
        side.is_qcow2 = True
        return side
    except BaseException:
        for s in owned:
            s.close()
        raise


def _side(path, force_share):
    from .probe import detect
    fmt = detect(path)
    if fmt == "qcow2":
        return _qcow2_side(path, force_share)
    if fmt in ("luks", "luks2"):
        return _luks_side(path, force_share)
    raise Error("%s is neither a LUKS volume nor a qcow2-luks image" % path)


def _key_mismatch(key_a, key_b):
    """The first fact both headers record and disagree on, or None."""
    for name, value in key_a.items():
        if name in key_b and key_b[name] != value:
            return name, value, key_b[name]
    return None


def compare_ciphertext(path_a, path_b, say=print, strict=False, force_share=False):
    """Compare the pair (see the module docstring): 0 identical, 1 not."""
    a = _side(path_a, force_share)
    try:
        b = _side(path_b, force_share)
        try:
            return _compare_sides(a, b, say, strict)
        finally:
            b.close()
    finally:
        a.close()


def _compare_sides(a, b, say, strict):
    if a.is_qcow2 == b.is_qcow2:
        raise Error("compare --ciphertext takes one LUKS volume and one qcow2-luks image with a "
                    "raw data file (both are %s)" % ("qcow2" if a.is_qcow2 else "LUKS volumes"))
    bad = _key_mismatch(a.key, b.key)
    if bad is not None:
        say("Key mismatch: the %s differs (%s vs %s)!" % bad)
        return 1
    if a.length != b.length:
        if strict:
            say("Strict mode: Image size mismatch!")
            return 1
        say("Warning: Image size mismatch!")
    diff = first_difference(a.data, a.start, b.data, b.start, min(a.length, b.length))
    if diff is not None:
        say("Content mismatch at offset %d!" % diff)
        return 1
    say("Images are identical.")
    return 0
