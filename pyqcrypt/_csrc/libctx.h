/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* pyqcrypt's private OpenSSL library context. */
#ifndef PYQ_LIBCTX_H
#define PYQ_LIBCTX_H

#include <openssl/types.h>

/* The context every algorithm is fetched from (NULL if OpenSSL's default
   provider could not be loaded); made once, on first use. */
OSSL_LIB_CTX *pyq_libctx(void);

/* 1 when the optional legacy provider (cast5, whirlpool...) is loaded. */
int pyq_legacy_loaded(void);

#endif
