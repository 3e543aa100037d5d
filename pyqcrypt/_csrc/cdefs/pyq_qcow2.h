/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* cffi cdef (not compiled): pyqcrypt's own C helpers for qcow2 metadata,
   in the _qcow2_native module (no library behind them). */

/* qcow2_l2.h */
int pyq_fill_identity_l2(unsigned char *buf, size_t buflen, size_t n,
                         uint64_t first, uint64_t step);
