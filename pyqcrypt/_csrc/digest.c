/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Hashing for key derivation: a one-shot digest (the ESSIV salt) and
   PBKDF2 through OpenSSL's KDF interface, so that the 64-bit iteration
   counts LUKS headers may hold reach OpenSSL unchanged. */

#include "digest.h"
#include "libctx.h"

#include <openssl/core_names.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

int pyq_digest(const EVP_MD *md, const unsigned char *data, size_t len,
               unsigned char *out, size_t outlen)
{
    unsigned int written = 0;
    int size;
    if (md == NULL || out == NULL || (data == NULL && len != 0))
        return -1;
    size = EVP_MD_get_size(md);
    if (size <= 0 || outlen < (size_t)size)
        return -1;
    return EVP_Digest(data, len, out, &written, md, NULL);
}

int pyq_pbkdf2(const char *mdname, const unsigned char *pass, size_t passlen,
               const unsigned char *salt, size_t saltlen, uint64_t iterations,
               unsigned char *out, size_t outlen)
{
    EVP_KDF *kdf;
    EVP_KDF_CTX *kctx;
    OSSL_PARAM params[6];
    int pkcs5 = 1;   /* plain PKCS#5: no SP 800-132 lower bounds */
    int rc;
    unsigned char empty = 0;

    kdf = EVP_KDF_fetch(pyq_libctx(), "PBKDF2", NULL);
    if (kdf == NULL)
        return 0;
    kctx = EVP_KDF_CTX_new(kdf);
    EVP_KDF_free(kdf);
    if (kctx == NULL)
        return 0;
    params[0] = OSSL_PARAM_construct_octet_string(
        OSSL_KDF_PARAM_PASSWORD, passlen ? (void *)pass : (void *)&empty, passlen);
    params[1] = OSSL_PARAM_construct_octet_string(
        OSSL_KDF_PARAM_SALT, saltlen ? (void *)salt : (void *)&empty, saltlen);
    params[2] = OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_ITER, &iterations);
    params[3] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST,
                                                 (char *)mdname, 0);
    params[4] = OSSL_PARAM_construct_int(OSSL_KDF_PARAM_PKCS5, &pkcs5);
    params[5] = OSSL_PARAM_construct_end();
    rc = EVP_KDF_derive(kctx, out, outlen, params);
    EVP_KDF_CTX_free(kctx);
    return rc;
}
