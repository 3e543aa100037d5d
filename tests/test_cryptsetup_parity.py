# SPDX-License-Identifier: LGPL-2.1-or-later
"""cryptsetup parity: every cryptsetup spelling pyqcrypt accepts (luksFormat,
luksDump, luksAddKey, luksRemoveKey, luksChangeKey, luksKillSlot, luksErase,
luksHeaderBackup, luksHeaderRestore, isLuks, luksUUID, luksUUID --uuid), on
LUKS1 and LUKS2, in a success and a failure case (wrong passphrase: 2,
missing device: 4, not LUKS or bad UUID: 1; and luksAddKey on an image
whose QEMU lock is held: pyqcrypt 5, cryptsetup goes ahead), run by both tools on copies
of the same volume: the same exit code, the same stdout, and the same
volume afterwards as cryptsetup sees it (see cryptsetup_parity).  A known,
deliberate difference (cryptsetup_parity.KNOWN) must stay exactly that:
same exit and stdout, a different volume.  ci/parity_cryptsetup.py prints
the table."""

import pytest

import cryptsetup_parity as parity
from conftest import tool


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("verb, case", parity.case_list())
def test_same_as_cryptsetup(workdir, version, verb, case):
    tool("cryptsetup")
    outcome = parity.run_case(parity.Scene(workdir, version), verb, case)
    detail = (outcome.cs_exit, outcome.pyq_exit, outcome.stderr)
    if case == "image locked":          # cryptsetup ignores QEMU's locks, pyqcrypt says busy
        assert (outcome.cs_exit, outcome.pyq_exit, outcome.after_same) == (0, 5, False), detail
        return
    assert outcome.cs_exit == outcome.pyq_exit, detail
    assert outcome.stdout_same, detail
    assert outcome.after_same == ((version, verb, case) not in parity.KNOWN), detail


def test_mask_hides_only_random_fields():
    text = ("LUKS header information for /tmp/a\n\nMK digest:     \t12 34 \nMK salt:       \tab cd \n"
            "               \tef 01 \nUUID:          \t0b9d8f6e-25c4-4a6f-9c1e-3f7a2d5b8c41\n"
            "\tIterations:         \t1000\n\tSalt:       aa bb\n")
    assert parity.masked(text) == (
        "LUKS header information for <device>\n\nMK digest:     \t<hex>\nMK salt:       \t<hex>\n"
        "               \t<hex>\nUUID:          \t<uuid>\n\tIterations:         \t1000\n"
        "\tSalt:       <hex>\n")
