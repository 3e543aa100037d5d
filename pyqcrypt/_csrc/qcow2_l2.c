/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* qcow2 L2 tables for an adopted raw data file: every guest cluster maps
   to the same offset of the data file, so the entries are an arithmetic
   sequence, filled here because a 1 TiB image has 16 million of them. */

#include "qcow2_l2.h"

#define PYQ_QCOW2_COPIED ((uint64_t)1 << 63)

int pyq_fill_identity_l2(unsigned char *buf, size_t buflen, size_t n,
                         uint64_t first, uint64_t step)
{
    size_t i;
    unsigned b;
    uint64_t v;

    if (n == 0)
        return 0;
    if (buf == NULL || n > buflen / 8)
        return -1;
    /* the last offset, first + (n - 1) * step, without overflow */
    if (first >= PYQ_QCOW2_OFFSET_LIMIT
        || (step != 0 && (uint64_t)(n - 1) > (PYQ_QCOW2_OFFSET_LIMIT - 1 - first) / step))
        return -1;
    for (i = 0; i < n; i++) {
        v = (first + i * step) | PYQ_QCOW2_COPIED;
        for (b = 0; b < 8; b++)
            buf[i * 8 + b] = (unsigned char)(v >> (56 - 8 * b));
    }
    return 0;
}
