/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* qcow2 L2 table helpers. */
#ifndef PYQ_QCOW2_L2_H
#define PYQ_QCOW2_L2_H

#include <stddef.h>
#include <stdint.h>

/* n big-endian L2 entries (first + i*step) | COPIED. */
void pyq_fill_identity_l2(unsigned char *buf, size_t n, uint64_t first, uint64_t step);

#endif
