/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Decoding a qcow2 zstd-compressed cluster with QEMU's framing.

   As QEMU's qcow2_zstd_decompress() does: zstd frames, one after another
   from the start of src, until dst holds exactly dstlen bytes; what follows
   the frame that completes the cluster is ignored (the L2 entry gives the
   compressed size only to the sector).  Each frame is measured first, then
   decoded in one shot straight into dst, so no window buffer is ever
   allocated, no frame may produce more than the room left, and every pass
   consumes input (no loop can spin).  Only current zstd frames and
   skippable frames are accepted, never the legacy (pre-1.0) formats, which
   QEMU's encoder never writes. */

#include "zstd_cluster.h"

#include <stdint.h>

long pyq_zstd_cluster(ZSTD_DCtx *dctx, unsigned char *dst, size_t dstlen,
                      const unsigned char *src, size_t srclen, const char **why)
{
    size_t in = 0, out = 0, fsize, n;
    uint32_t magic;

    if (why == NULL)
        return -1;
    *why = NULL;
    if (dctx == NULL || dstlen > ((size_t)1 << 30) || (dst == NULL && dstlen != 0)
        || (src == NULL && srclen != 0)) {
        *why = "bad arguments";
        return -1;
    }
    while (out < dstlen) {
        if (srclen - in < 4) {
            *why = "the compressed data ends before the cluster is complete";
            return -1;
        }
        magic = (uint32_t)src[in] | (uint32_t)src[in + 1] << 8
                | (uint32_t)src[in + 2] << 16 | (uint32_t)src[in + 3] << 24;
        if (magic != ZSTD_MAGICNUMBER
            && (magic & ZSTD_MAGIC_SKIPPABLE_MASK) != ZSTD_MAGIC_SKIPPABLE_START) {
            *why = "no zstd frame where one should start";
            return -1;
        }
        fsize = ZSTD_findFrameCompressedSize(src + in, srclen - in);
        if (ZSTD_isError(fsize)) {
            *why = ZSTD_getErrorName(fsize);
            return -1;
        }
        n = ZSTD_decompressDCtx(dctx, dst + out, dstlen - out, src + in, fsize);
        if (ZSTD_isError(n)) {
            *why = ZSTD_getErrorName(n);
            return -1;
        }
        in += fsize;
        out += n;
    }
    return (long)out;
}
