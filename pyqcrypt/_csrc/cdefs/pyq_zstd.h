/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* cffi cdef (not compiled): pyqcrypt's own C routines in the libzstd
   module. */

/* zstd_cluster.h */
long pyq_zstd_cluster(ZSTD_DCtx *dctx, unsigned char *dst, size_t dstlen,
                      const unsigned char *src, size_t srclen, const char **why);
