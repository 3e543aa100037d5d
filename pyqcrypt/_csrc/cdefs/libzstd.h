/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* cffi cdef (not compiled): what pyqcrypt calls in libzstd. */

typedef ... ZSTD_DCtx;
ZSTD_DCtx *ZSTD_createDCtx(void);
size_t ZSTD_freeDCtx(ZSTD_DCtx *dctx);
unsigned ZSTD_versionNumber(void);
