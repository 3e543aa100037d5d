# SPDX-License-Identifier: LGPL-2.1-or-later
"""LUKS2 test helpers, independent of pyqcrypt's LUKS2 code.

* ``make_luks2``: a LUKS2 volume made by ``cryptsetup reencrypt --encrypt``
  from known random plaintext (attached header with --reduce-device-size,
  or a detached header with the payload at offset 0), and what its
  payload decrypts to.
* ``volume_key`` and ``pyca_crypt``: the volume key from ``luksDump
  --dump-volume-key`` and dm-crypt's sector encryption done with
  pyca/cryptography, an oracle that is not pyqcrypt.
* ``cs_decrypt``: cryptsetup's offline decryption of a detached-header
  volume, the other oracle.
* ``read_json`` / ``write_json``: the JSON area of both header copies, read
  and rewritten with the binary headers' checksums recomputed (a few lines
  of ``struct`` and ``hashlib``, not pyqcrypt's parser).
"""

import hashlib
import json
import os
import re
import struct
import subprocess

import pytest

from conftest import run, tool, write_file

MiB = 1 << 20
RESERVE = 4 * MiB          # --reduce-device-size: the data segment starts at RESERVE / 2
PW = b"luks2 test passphrase"
KDF_ARGS = {
    "pbkdf2": ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"],
    "argon2id": ["--pbkdf", "argon2id", "--pbkdf-memory", "32768", "--pbkdf-force-iterations", "4",
                 "--pbkdf-parallel", "1"],
}


class Volume:
    """A LUKS2 volume made by cryptsetup: *vol* (the file), *header* (a
    detached header or None), *keyfile* (its passphrase, PW), *offset* of
    the data segment, *key_bits*, *unit* (sector size), *cipher*, and
    *plain*: the bytes its whole payload decrypts to."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    @property
    def size(self):
        return len(self.plain)

    def image_opts(self, sid="s"):
        """qemu-style --image-opts for the volume as a LUKS source."""
        return "driver=luks,file.filename=%s%s,key-secret=%s" % (
            self.vol, ",header=%s" % self.header if self.header else "", sid)


def kdf_args(kdf):
    return list(KDF_ARGS[kdf])


def make_luks2(workdir, name="v.luks2", cipher="aes-xts-plain64", bits=512, unit=512, kdf="pbkdf2",
               detached=False, size=8 * MiB, passphrase=PW, extra=()):
    """A LUKS2 volume encrypted in place from random plaintext by
    ``cryptsetup reencrypt --encrypt --force-offline-reencrypt`` (no
    dm-crypt needed).  With an attached header only the first size -
    RESERVE payload bytes are the plaintext; the rest of the payload is
    whatever decrypts from the bytes cryptsetup left there, computed here
    with the pyca oracle, so ``Volume.plain`` covers the whole payload."""
    cs = tool("cryptsetup")
    vol = os.path.join(workdir, name)
    keyfile = write_file(vol + ".key", passphrase)
    header = vol + ".hdr" if detached else None
    known = os.urandom(size if detached else size - RESERVE)
    with open(vol, "wb") as fh:
        fh.write(known)
        fh.truncate(size)
    args = [cs, "reencrypt", "--encrypt", "--type", "luks2", "--force-offline-reencrypt", "-q",
            "--cipher", cipher, "--key-size", str(bits), "--sector-size", str(unit),
            "--key-file", keyfile] + kdf_args(kdf)
    if detached:
        args += ["--header", header, "--luks2-keyslots-size", "1M"]
    else:
        args += ["--reduce-device-size", "%dM" % (RESERVE // MiB)]
    run(args + list(extra) + [vol])
    seg = segment(vol, header)
    assert (seg["sector"], seg["cipher"], seg["iv_tweak"]) == (unit, cipher, 0), seg
    assert seg["offset"] == (0 if detached else RESERVE // 2), seg
    v = Volume(vol=vol, header=header, keyfile=keyfile, passphrase=passphrase, offset=seg["offset"],
               key_bits=bits, unit=unit, cipher=cipher, kdf=kdf, plain=known)
    if not detached:
        payload = pyca_payload(v)
        assert payload[:len(known)] == known, "the pyca oracle does not decrypt cryptsetup's volume"
        v.plain = payload
    return v


def dump_value(text, label):
    """The hex bytes luksDump prints after *label* (and on its continuation lines)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(label):
            hexes = [line[len(label):]]
            for more in lines[i + 1:]:
                if not more[:1].isspace():
                    break
                hexes.append(more)
            return bytes.fromhex("".join("".join(hexes).split()))
    raise AssertionError("no %r in luksDump output:\n%s" % (label, text))


def volume_key(vol, keyfile, header=None):
    """The volume key, from ``cryptsetup luksDump --dump-volume-key``."""
    args = [tool("cryptsetup"), "luksDump", "--dump-volume-key", "-q", "--key-file", keyfile]
    if header:
        args += ["--header", header]
    text = run(args + [vol]).stdout.decode()
    return dump_value(text, "MK dump:" if "MK dump:" in text else "Volume key:")


def segment(vol, header=None):
    """Data segment 0 as ``cryptsetup luksDump`` prints it."""
    args = [tool("cryptsetup"), "luksDump"] + (["--header", header] if header else []) + [vol]
    text = run(args).stdout.decode()
    seg = text.split("Data segments:", 1)[1].split("Keyslots:", 1)[0]
    assert re.search(r"^\s*0: crypt$", seg, re.M) and "1:" not in seg, seg
    tweak = re.search(r"IV tweak:\s*(\d+)", seg)
    length = re.search(r"length:\s*(\d+) \[bytes\]", seg)
    return {"offset": int(re.search(r"offset:\s*(\d+) \[bytes\]", seg).group(1)),
            "sector": int(re.search(r"sector:\s*(\d+) \[bytes\]", seg).group(1)),
            "cipher": re.search(r"cipher:\s*(\S+)", seg).group(1),
            "iv_tweak": int(tweak.group(1)) if tweak else 0,
            "length": int(length.group(1)) if length else None}


def pyca_crypt(cipher, key, data, unit, first, encrypt):
    """dm-crypt's encryption of *data* with pyca/cryptography: units of
    *unit* bytes, unit k's IV number first + k * unit / 512 (plain64 as a
    16-byte little-endian tweak; ESSIV: that block encrypted with
    AES-ECB under sha256(key))."""
    ciphers = pytest.importorskip("cryptography.hazmat.primitives.ciphers")
    Cipher, algorithms, modes = ciphers.Cipher, ciphers.algorithms, ciphers.modes
    assert len(data) % unit == 0
    if cipher == "aes-xts-plain64":
        def mode(iv):
            return modes.XTS(iv)
    elif cipher == "aes-cbc-essiv:sha256":
        essiv = Cipher(algorithms.AES(hashlib.sha256(key).digest()), modes.ECB())

        def mode(iv):
            return modes.CBC(essiv.encryptor().update(iv))
    else:
        raise AssertionError("no pyca oracle for %s" % cipher)
    out = bytearray()
    step = unit // 512
    for k in range(len(data) // unit):
        iv = struct.pack("<Q", first + k * step) + bytes(8)
        c = Cipher(algorithms.AES(key), mode(iv))
        ctx = c.encryptor() if encrypt else c.decryptor()
        out += ctx.update(data[k * unit:(k + 1) * unit]) + ctx.finalize()
    return bytes(out)


def pyca_payload(v, length=None, iv_tweak=0):
    """The whole payload of Volume *v* decrypted by the pyca oracle."""
    key = volume_key(v.vol, v.keyfile, v.header)
    assert len(key) * 8 == v.key_bits
    with open(v.vol, "rb") as fh:
        fh.seek(v.offset)
        data = fh.read() if length is None else fh.read(length)
    data = data[:len(data) - len(data) % v.unit]
    return pyca_crypt(v.cipher, key, data, v.unit, iv_tweak, False)


def cs_decrypt(v):
    """Decrypt a detached-header volume in place with cryptsetup's offline
    decryption; returns the file's bytes (the plaintext)."""
    assert v.header
    run([tool("cryptsetup"), "reencrypt", "--decrypt", "--header", v.header,
         "--force-offline-reencrypt", "-q", "--key-file", v.keyfile, v.vol])
    with open(v.vol, "rb") as fh:
        return fh.read()


# ---- the JSON area of both header copies ------------------------------------------

MAGIC1, MAGIC2 = b"LUKS\xba\xbe", b"SKUL\xba\xbe"
CSUM_OFF, CSUM_LEN = 448, 64


def _copies(data):
    hdr_size = struct.unpack_from(">Q", data, 8)[0]
    assert data[:6] == MAGIC1 and data[hdr_size:hdr_size + 6] == MAGIC2
    return hdr_size


def read_json(path):
    """The JSON document of the primary header of *path*."""
    with open(path, "rb") as fh:
        data = fh.read(64 << 10)
    hdr_size = _copies(data)
    return json.loads(data[4096:hdr_size].split(b"\0", 1)[0])


def checksum(copy):
    """The binary header's checksum over one whole copy (csum field zeroed)."""
    alg = copy[72:104].split(b"\0", 1)[0].decode()
    z = bytearray(copy)
    z[CSUM_OFF:CSUM_OFF + CSUM_LEN] = bytes(CSUM_LEN)
    return hashlib.new(alg, bytes(z)).digest()


def write_raw_json(path, text):
    """Put *text* (bytes) into the JSON area of both copies, NUL-padded,
    and recompute both checksums."""
    with open(path, "r+b") as fh:
        data = bytearray(fh.read(64 << 10))
        hdr_size = _copies(data)
        assert len(text) < hdr_size - 4096, "JSON too long for the area"
        for base in (0, hdr_size):
            copy = data[base:base + hdr_size]
            copy[4096:] = text + bytes(hdr_size - 4096 - len(text))
            digest = checksum(copy)
            copy[CSUM_OFF:CSUM_OFF + CSUM_LEN] = digest.ljust(CSUM_LEN, b"\0")
            data[base:base + hdr_size] = copy
        fh.seek(0)
        fh.write(bytes(data[:2 * hdr_size]))


def write_json(path, doc):
    write_raw_json(path, json.dumps(doc, separators=(",", ":")).encode())


def luksdump_ok(vol, header=None):
    """True when cryptsetup luksDump loads the (mutated) header."""
    args = [tool("cryptsetup"), "luksDump"] + (["--header", header] if header else []) + [vol]
    return subprocess.run(args, capture_output=True).returncode == 0
