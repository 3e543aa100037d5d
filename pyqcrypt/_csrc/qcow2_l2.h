/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* qcow2 L2 table helpers. */
#ifndef PYQ_QCOW2_L2_H
#define PYQ_QCOW2_L2_H

#include <stddef.h>
#include <stdint.h>

/* Host offsets must stay below this: qcow2 keeps them in bits 9-55 of an
   L1 or L2 entry. */
#define PYQ_QCOW2_OFFSET_LIMIT ((uint64_t)1 << 56)

/* Write n big-endian 8-byte entries (first + i*step) | COPIED at buf, which
   holds buflen bytes.  0 on success; -1, with buf untouched, when the n
   entries do not fit in buflen bytes or the last offset reaches
   PYQ_QCOW2_OFFSET_LIMIT. */
int pyq_fill_identity_l2(unsigned char *buf, size_t buflen, size_t n,
                         uint64_t first, uint64_t step);

#endif
