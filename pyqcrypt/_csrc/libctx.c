/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* pyqcrypt's private OpenSSL library context: the default provider and,
   when present, the legacy one, so that the process's global OpenSSL
   configuration is never changed. */

#include "libctx.h"

#include <openssl/err.h>
#include <openssl/provider.h>
#include <pthread.h>

static OSSL_LIB_CTX *pyq_ctx;
static int pyq_have_legacy;
static pthread_once_t pyq_ctx_once = PTHREAD_ONCE_INIT;

static void pyq_ctx_init(void)
{
    OSSL_LIB_CTX *ctx = OSSL_LIB_CTX_new();
    if (ctx == NULL)
        return;
    if (OSSL_PROVIDER_load(ctx, "default") == NULL) {
        OSSL_LIB_CTX_free(ctx);
        return;
    }
    /* cast5, whirlpool and friends live in the legacy provider; it is
       optional, and its absence only makes those algorithms unavailable. */
    pyq_have_legacy = OSSL_PROVIDER_load(ctx, "legacy") != NULL;
    ERR_clear_error();
    pyq_ctx = ctx;
}

OSSL_LIB_CTX *pyq_libctx(void)
{
    pthread_once(&pyq_ctx_once, pyq_ctx_init);
    return pyq_ctx;
}

int pyq_legacy_loaded(void)
{
    pyq_libctx();
    return pyq_have_legacy;
}
