/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The sector loop: a cipher context keyed once per direction, then for
   each sector of a run only the IV changes (plain, plain64, plain64be or
   essiv, as dm-crypt defines them).

   Changing the IV through EVP_CipherInit_ex() costs as much as encrypting
   a 512-byte sector in OpenSSL 3, so where the implementing provider
   exposes its cipher functions (provider-cipher(7), reached through the
   public OSSL_PROVIDER_query_operation()), the loop calls them directly:
   one init call that sets only the IV, one cipher call per sector.  The
   EVP path remains as a fallback; pyq_force_evp_fallback() selects it so
   that tests cover it too. */

#include "sector_cipher.h"

#include <openssl/core.h>
#include <openssl/core_dispatch.h>
#include <openssl/err.h>
#include <openssl/provider.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* pyq_force_evp_fallback()'s setting; atomic because threads make their
   contexts concurrently. */
static atomic_int pyq_evp_forced;

int pyq_force_evp_fallback(int on)
{
    return atomic_exchange(&pyq_evp_forced, on != 0);
}

struct pyq_sector_ctx {
    EVP_CIPHER_CTX *ctx;     /* EVP path: keyed once; only the IV changes */
    EVP_CIPHER_CTX *essiv;   /* ECB context keyed with hash(key) */
    void *algctx;            /* direct path: the provider's own context */
    OSSL_FUNC_cipher_encrypt_init_fn *init;
    OSSL_FUNC_cipher_cipher_fn *cipher;
    OSSL_FUNC_cipher_freectx_fn *freectx;
    int ivmode;
    int ivlen;
    int block;
};

void pyq_sector_free(struct pyq_sector_ctx *s)
{
    if (s == NULL)
        return;
    if (s->algctx != NULL && s->freectx != NULL)
        s->freectx(s->algctx);       /* providers wipe their key schedule */
    EVP_CIPHER_CTX_free(s->ctx);
    EVP_CIPHER_CTX_free(s->essiv);
    OPENSSL_cleanse(s, sizeof(*s));
    free(s);
}

static int pyq_names_match(const EVP_CIPHER *cipher, const char *names)
{
    char name[128];
    const char *p = names, *q;
    size_t n;
    while (p != NULL && *p) {
        q = strchr(p, ':');
        n = q ? (size_t)(q - p) : strlen(p);
        if (n < sizeof(name)) {
            memcpy(name, p, n);
            name[n] = 0;
            if (EVP_CIPHER_is_a(cipher, name))
                return 1;
        }
        p = q ? q + 1 : NULL;
    }
    return 0;
}

/* Set up the direct provider path; returns 0 (and leaves s untouched) when
   the provider does not offer what it needs. */
static int pyq_sector_direct(struct pyq_sector_ctx *s, const EVP_CIPHER *cipher,
                             const unsigned char *key, size_t keylen, int enc)
{
    const OSSL_PROVIDER *prov = EVP_CIPHER_get0_provider(cipher);
    const OSSL_ALGORITHM *algs, *a;
    const OSSL_DISPATCH *d;
    OSSL_FUNC_cipher_newctx_fn *newctx = NULL;
    OSSL_FUNC_cipher_encrypt_init_fn *einit = NULL, *dinit = NULL;
    OSSL_FUNC_cipher_cipher_fn *ciph = NULL;
    OSSL_FUNC_cipher_freectx_fn *freectx = NULL;
    void *algctx;
    int no_cache = 0;

    if (prov == NULL)
        return 0;
    algs = OSSL_PROVIDER_query_operation(prov, OSSL_OP_CIPHER, &no_cache);
    if (algs == NULL)
        return 0;
    for (a = algs; a->algorithm_names != NULL; a++)
        if (pyq_names_match(cipher, a->algorithm_names))
            break;
    if (a->algorithm_names != NULL) {
        for (d = a->implementation; d->function_id != 0; d++) {
            switch (d->function_id) {
            case OSSL_FUNC_CIPHER_NEWCTX:
                newctx = OSSL_FUNC_cipher_newctx(d); break;
            case OSSL_FUNC_CIPHER_ENCRYPT_INIT:
                einit = OSSL_FUNC_cipher_encrypt_init(d); break;
            case OSSL_FUNC_CIPHER_DECRYPT_INIT:
                dinit = OSSL_FUNC_cipher_decrypt_init(d); break;
            case OSSL_FUNC_CIPHER_CIPHER:
                ciph = OSSL_FUNC_cipher_cipher(d); break;
            case OSSL_FUNC_CIPHER_FREECTX:
                freectx = OSSL_FUNC_cipher_freectx(d); break;
            }
        }
    }
    OSSL_PROVIDER_unquery_operation(prov, OSSL_OP_CIPHER, algs);
    if (newctx == NULL || einit == NULL || dinit == NULL || ciph == NULL
        || freectx == NULL)
        return 0;
    algctx = newctx(OSSL_PROVIDER_get0_provider_ctx(prov));
    if (algctx == NULL)
        return 0;
    if (!(enc ? einit : dinit)(algctx, key, keylen, NULL, 0, NULL)) {
        freectx(algctx);
        return 0;
    }
    s->algctx = algctx;
    s->init = enc ? einit : dinit;
    s->cipher = ciph;
    s->freectx = freectx;
    return 1;
}

struct pyq_sector_ctx *pyq_sector_new(const EVP_CIPHER *cipher,
                                      const unsigned char *key, size_t keylen,
                                      int ivmode, const EVP_CIPHER *essiv_cipher,
                                      const unsigned char *essiv_key,
                                      size_t essiv_keylen, int enc)
{
    struct pyq_sector_ctx *s;
    if (cipher == NULL || key == NULL || ivmode < PYQ_IV_NONE || ivmode > PYQ_IV_ESSIV)
        return NULL;
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->ivmode = ivmode;
    s->ivlen = EVP_CIPHER_get_iv_length(cipher);
    s->block = EVP_CIPHER_get_block_size(cipher);
    if (s->ivlen < 0 || s->ivlen > EVP_MAX_IV_LENGTH || s->block <= 0)
        goto fail;
    if (ivmode != PYQ_IV_NONE && s->ivlen < 8 && ivmode != PYQ_IV_PLAIN)
        goto fail;
    if ((size_t)EVP_CIPHER_get_key_length(cipher) != keylen)
        goto fail;
    if (atomic_load(&pyq_evp_forced)
        || !pyq_sector_direct(s, cipher, key, keylen, enc)) {
        ERR_clear_error();
        /* No EVP_CIPHER_CTX_set_padding: EVP_Cipher() has no padding logic,
           and the flag would cost a parameter push at every IV change. */
        s->ctx = EVP_CIPHER_CTX_new();
        if (s->ctx == NULL
            || !EVP_CipherInit_ex(s->ctx, cipher, NULL, key, NULL, enc))
            goto fail;
    }
    if (ivmode == PYQ_IV_ESSIV) {
        if (essiv_cipher == NULL
            || (size_t)EVP_CIPHER_get_key_length(essiv_cipher) != essiv_keylen
            || EVP_CIPHER_get_block_size(essiv_cipher) != s->ivlen)
            goto fail;
        s->essiv = EVP_CIPHER_CTX_new();
        if (s->essiv == NULL
            || !EVP_EncryptInit_ex(s->essiv, essiv_cipher, NULL, essiv_key, NULL))
            goto fail;
    }
    return s;
fail:
    pyq_sector_free(s);
    return NULL;
}

int pyq_sector_direct_path(struct pyq_sector_ctx *s)
{
    return s != NULL && s->algctx != NULL;
}

int pyq_sector_crypt(struct pyq_sector_ctx *s, unsigned char *buf, size_t len,
                     size_t sector_size, uint64_t first_sector, uint64_t iv_step)
{
    unsigned char iv[EVP_MAX_IV_LENGTH];
    unsigned char block[EVP_MAX_IV_LENGTH];
    uint64_t sector = first_sector;
    size_t off, outl;
    int i;

    if (s == NULL || (buf == NULL && len != 0)
        || sector_size == 0 || sector_size > (1u << 20)
        || len % sector_size != 0 || sector_size % (size_t)s->block != 0
        || iv_step == 0)
        return -1;
    /* The last unit's number, first_sector + (units - 1) * iv_step, must
       not pass 2^64 - 1: a wrapped IV number would repeat an earlier one. */
    if (len != 0 && (uint64_t)(len / sector_size - 1) > (UINT64_MAX - first_sector) / iv_step)
        return -1;
    for (off = 0; off < len; off += sector_size, sector += iv_step) {
        if (s->ivmode != PYQ_IV_NONE) {
            memset(iv, 0, (size_t)s->ivlen);
            switch (s->ivmode) {
            case PYQ_IV_PLAIN:
                for (i = 0; i < 4 && i < s->ivlen; i++)
                    iv[i] = (unsigned char)(sector >> (8 * i));
                break;
            case PYQ_IV_PLAIN64:
                for (i = 0; i < 8; i++)
                    iv[i] = (unsigned char)(sector >> (8 * i));
                break;
            case PYQ_IV_PLAIN64BE:
                for (i = 0; i < 8; i++)
                    iv[s->ivlen - 1 - i] = (unsigned char)(sector >> (8 * i));
                break;
            case PYQ_IV_ESSIV:
                memset(block, 0, (size_t)s->ivlen);
                for (i = 0; i < 8; i++)
                    block[i] = (unsigned char)(sector >> (8 * i));
                if (EVP_Cipher(s->essiv, iv, block, (unsigned int)s->ivlen) <= 0)
                    return 0;
                break;
            default:
                return -1;
            }
            if (s->algctx != NULL) {
                if (!s->init(s->algctx, NULL, 0, iv, (size_t)s->ivlen, NULL))
                    return 0;
            } else if (!EVP_CipherInit_ex(s->ctx, NULL, NULL, NULL, iv, -1)) {
                return 0;
            }
        }
        if (s->algctx != NULL) {
            if (!s->cipher(s->algctx, buf + off, &outl, sector_size, buf + off,
                           sector_size) || outl != sector_size)
                return 0;
        } else if (EVP_Cipher(s->ctx, buf + off, buf + off,
                              (unsigned int)sector_size) <= 0) {
            return 0;
        }
    }
    return 1;
}
