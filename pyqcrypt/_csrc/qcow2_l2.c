/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* qcow2 L2 tables for an adopted raw data file: every guest cluster maps
   to the same offset of the data file, so the entries are an arithmetic
   sequence, filled here because a 1 TiB image has 16 million of them. */

#include "qcow2_l2.h"

void pyq_fill_identity_l2(unsigned char *buf, size_t n, uint64_t first, uint64_t step)
{
    size_t i;
    unsigned b;
    uint64_t v;
    for (i = 0; i < n; i++) {
        v = (first + i * step) | ((uint64_t)1 << 63);
        for (b = 0; b < 8; b++)
            buf[i * 8 + b] = (unsigned char)(v >> (56 - 8 * b));
    }
}
