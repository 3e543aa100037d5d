# SPDX-License-Identifier: LGPL-2.1-or-later
"""``cryptsetup luksDump`` text for LUKS1 headers, byte for byte.

Hex fields print 16 bytes a line ("xx " each, trailing space kept); the
master-key digest prints its 20 bytes on one line.  Labels and tabs follow
cryptsetup 2.x exactly, so a diff against its output is empty.
"""


def _hex(data):
    return "".join("%02x " % b for b in data)


def _hex_lines(data, first_prefix, next_prefix):
    chunks = [data[i:i + 16] for i in range(0, len(data), 16)] or [b""]
    lines = [first_prefix + _hex(chunks[0])]
    lines += [next_prefix + _hex(c) for c in chunks[1:]]
    return lines


def dump_text(header, name):
    """luksDump output for *header*, titled with the device *name*."""
    out = ["LUKS header information for %s" % name, "",
           "Version:       \t%d" % header.version,
           "Cipher name:   \t%s" % header.cipher_name,
           "Cipher mode:   \t%s" % header.cipher_mode,
           "Hash spec:     \t%s" % header.hash_spec,
           "Payload offset:\t%d" % header.payload_offset,
           "MK bits:       \t%d" % (header.key_bytes * 8),
           "MK digest:     \t" + _hex(header.mk_digest)]
    out += _hex_lines(header.mk_digest_salt, "MK salt:       \t", "               \t")
    out += ["MK iterations: \t%d" % header.mk_digest_iter,
            "UUID:          \t%s" % header.uuid, ""]
    for n, ks in enumerate(header.slots):
        if not ks.active:
            out.append("Key Slot %d: DISABLED" % n)
            continue
        out.append("Key Slot %d: ENABLED" % n)
        out.append("\tIterations:         \t%d" % ks.iterations)
        out += _hex_lines(ks.salt, "\tSalt:               \t", "\t                      \t")
        out.append("\tKey material offset:\t%d" % ks.km_offset)
        out.append("\tAF stripes:            \t%d" % ks.stripes)
    return "\n".join(out) + "\n"


def dump_volume_key_text(header, name, master_key_bytes):
    """luksDump --dump-volume-key output (the key itself is printed: the
    user asked for it)."""
    out = ["LUKS header information for %s" % name,
           "Cipher name:   \t%s" % header.cipher_name,
           "Cipher mode:   \t%s" % header.cipher_mode,
           "Payload offset:\t%d" % header.payload_offset,
           "UUID:          \t%s" % header.uuid,
           "MK bits:       \t%d" % (header.key_bytes * 8)]
    out += _hex_lines(master_key_bytes, "MK dump:\t", "\t\t")
    return "\n".join(out) + "\n"


def dump_fields(header):
    """What ``dump_text`` prints, as a JSON-ready dict (``pyqcrypt dump
    --output json``): the same fields, hex strings for the digest and
    salts, and for each of the 8 keyslots its state and, when enabled, its
    iterations, salt, key material offset and stripes.  Nothing secret:
    luksDump prints all of it."""
    slots = []
    for n, ks in enumerate(header.slots):
        slot = {"slot": n, "state": "enabled" if ks.active else "disabled"}
        if ks.active:
            slot.update(iterations=ks.iterations, salt=ks.salt.hex(),
                        key_material_offset=ks.km_offset, stripes=ks.stripes)
        slots.append(slot)
    return {"version": header.version, "cipher_name": header.cipher_name,
            "cipher_mode": header.cipher_mode, "hash_spec": header.hash_spec,
            "payload_offset": header.payload_offset, "mk_bits": header.key_bytes * 8,
            "mk_digest": header.mk_digest.hex(), "mk_salt": header.mk_digest_salt.hex(),
            "mk_iterations": header.mk_digest_iter, "uuid": header.uuid, "keyslots": slots}
