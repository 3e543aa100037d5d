# SPDX-License-Identifier: LGPL-2.1-or-later
"""A script as a pyqcrypt user would write it, using every public function
of the API; tests/test_api_typing.py type-checks it with mypy --strict
and runs it.  Usage: python api_user_script.py SCRATCH_DIR"""

import os
import sys
from typing import Optional, Tuple

import pyqcrypt


def describe(image: pyqcrypt.Image) -> str:
    """What pyqcrypt.open returned: its format, file, size and state."""
    state = "writable" if image.writable else "read-only"
    return "%s %s, %d bytes, %s" % (image.format, image.path, image.size,
                                    "closed" if image.closed else state)


def qcow2_keyslots(workdir: str) -> Tuple[int, ...]:
    """Create a qcow2-luks image, write to it, and turn its keyslots over."""
    disk = os.path.join(workdir, "disk.qcow2")
    pyqcrypt.create(disk, 1 << 20, passphrase=b"first", iterations=1000)
    with pyqcrypt.open(disk, b"first", writable=True) as image:
        image.write(0, b"hello".ljust(512, b"\0"))
        head: bytes = image.read(0, 5)
        image.write_zeroes(4096, 512)
        image.discard(0, 1 << 16)
        image.flush()
        assert describe(image) == "qcow2 %s, 1048576 bytes, writable" % disk
    assert head == b"hello" and describe(image).endswith(" bytes, closed")
    added: int = pyqcrypt.add_key(disk, "first", "second", iter_time=10)
    try:
        pyqcrypt.check_passphrase(disk, b"wrong")
    except pyqcrypt.WrongPassphrase:
        pass
    changed: int = pyqcrypt.change_key(disk, "second", b"third", slot=added, iter_time=10)
    opened: int = pyqcrypt.check_passphrase(disk, "third", slot=changed)
    backup = os.path.join(workdir, "disk.header")
    pyqcrypt.header_backup(disk, backup)
    removed: int = pyqcrypt.remove_key(disk, "first")
    pyqcrypt.header_restore(disk, backup)
    pyqcrypt.kill_slot(disk, opened, passphrase="first")
    about: pyqcrypt.ImageInfo = pyqcrypt.info(disk)
    cipher: Optional[str] = about.cipher
    print("qcow2: added %d, changed into %d, removed %d, cipher %s" % (added, changed, removed,
                                                                      cipher))
    raw = os.path.join(workdir, "disk.raw")
    data_file: Optional[str] = pyqcrypt.convert(disk, raw, dst_format="raw",
                                                src_passphrase=b"first")
    assert data_file is None
    return about.keyslots


def detached_luks1(workdir: str) -> int:
    """A LUKS1 volume with its header in a file of its own, then erased."""
    volume = os.path.join(workdir, "data.img")
    header = os.path.join(workdir, "data.hdr")
    pyqcrypt.create(volume, 1 << 20, "luks", passphrase=b"pass", iterations=1000, header=header)
    slot: int = pyqcrypt.check_passphrase(volume, "pass", header=header)
    pyqcrypt.erase(volume, header=header)
    return slot


def main(workdir: str) -> int:
    slots = qcow2_keyslots(workdir)
    print("keyslots in use:", list(slots))
    print("detached header opened in slot", detached_luks1(workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
