# SPDX-License-Identifier: LGPL-2.1-or-later
"""Which cipher choices are too weak to create without an explicit opt-in.

Creating (never reading or converting away from) any of these needs
``allow_insecure``, and then warns with the reason:

* ECB: equal plaintext blocks give equal ciphertext, so data patterns show.
* ``plain`` IVs on volumes above 2 TiB: the 32-bit sector number wraps, so
  sectors 2^32 apart share IVs.
* CBC with a predictable IV (``plain``, ``plain64``, ``plain64be``): chosen
  plaintext can be made to show through (the watermarking attack); use XTS,
  or CBC with ESSIV.
* LRW: a legacy mode (the IEEE P1619 drafts dropped it for XTS); its
  tweak key leaks when a volume stores its own key material, and it is
  supported for reading and writing existing volumes.
* Legacy qcow2 AES (see ``pyqcrypt.qcow2``): the same CBC weakness, keyed
  directly by the passphrase with no key stretching.
"""

import warnings

from ..errors import Error

PLAIN_IV_LIMIT = 2 << 40          # 2 TiB: 2^32 sectors of 512 bytes


class InsecureCipherWarning(UserWarning):
    """Emitted when a weak cipher choice is created with allow_insecure."""


def weaknesses(spec, size_bytes=None):
    """Reasons *spec* is weak for a volume of *size_bytes* (empty: fine)."""
    out = []
    if spec.mode == "ecb":
        out.append("ECB mode encrypts equal blocks to equal ciphertext, so data patterns show "
                   "through")
    if spec.mode == "lrw":
        out.append("LRW is a legacy mode superseded by XTS; its tweak key leaks when the volume "
                   "stores data derived from it (use xts-plain64)")
    if spec.ivgen == "plain" and size_bytes is not None and size_bytes > PLAIN_IV_LIMIT:
        out.append("plain IVs are 32-bit and wrap above 2 TiB, so sectors 2^32 apart share IVs "
                   "(use plain64)")
    if spec.mode == "cbc" and spec.ivgen in ("plain", "plain64", "plain64be"):
        out.append("CBC with predictable %s IVs allows watermarking attacks (use xts-plain64, or "
                   "cbc-essiv:sha256)" % spec.ivgen)
    return out


def enforce(spec, size_bytes=None, allow_insecure=False):
    """Raise unless *spec* is sound or *allow_insecure*; warn when allowed."""
    reasons = weaknesses(spec, size_bytes)
    if not reasons:
        return
    text = "%s is insecure: %s" % (spec.cryptsetup_spec, "; ".join(reasons))
    if not allow_insecure:
        raise Error(text + ". Creating it needs --allow-insecure (allow_insecure=True)")
    warnings.warn(text, InsecureCipherWarning, stacklevel=3)
