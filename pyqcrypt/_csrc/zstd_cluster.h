/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* qcow2 zstd-compressed clusters. */
#ifndef PYQ_ZSTD_CLUSTER_H
#define PYQ_ZSTD_CLUSTER_H

#include <stddef.h>
#include <zstd.h>

/* Decode one compressed cluster from src into exactly dstlen bytes at dst.
   Returns dstlen, or -1 with *why set to a static message (bad arguments:
   NULL buffers with non-zero lengths, dstlen over 1 GiB). */
long pyq_zstd_cluster(ZSTD_DCtx *dctx, unsigned char *dst, size_t dstlen,
                      const unsigned char *src, size_t srclen, const char **why);

#endif
