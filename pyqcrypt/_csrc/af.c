/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The LUKS anti-forensic splitter (LUKS1 on-disk format, section "AF"):
   stripes - 1 random blocks, each folded into an accumulator that is then
   diffused (hashed in digest-sized pieces, each prefixed with its
   big-endian 32-bit index); the last stripe is the key XOR the
   accumulator.  The accumulator lives in a wiped, page-locked buffer. */

#include "af.h"
#include "libctx.h"
#include "secmem.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdint.h>
#include <string.h>

static int pyq_diffuse(const EVP_MD *md, EVP_MD_CTX *mctx, unsigned char *buf,
                       size_t size)
{
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned char counter[4];
    size_t dlen = (size_t)EVP_MD_get_size(md);
    size_t blocks, i, n;
    int ok = 1;

    if (dlen == 0 || dlen > EVP_MAX_MD_SIZE)
        return 0;
    blocks = (size + dlen - 1) / dlen;
    for (i = 0; i < blocks && ok; i++) {
        n = (i + 1) * dlen <= size ? dlen : size - i * dlen;
        counter[0] = (unsigned char)(i >> 24);
        counter[1] = (unsigned char)(i >> 16);
        counter[2] = (unsigned char)(i >> 8);
        counter[3] = (unsigned char)i;
        ok = EVP_DigestInit_ex(mctx, md, NULL)
             && EVP_DigestUpdate(mctx, counter, 4)
             && EVP_DigestUpdate(mctx, buf + i * dlen, n)
             && EVP_DigestFinal_ex(mctx, out, NULL);
        if (ok)
            memcpy(buf + i * dlen, out, n);
    }
    OPENSSL_cleanse(out, sizeof(out));
    return ok;
}

static void pyq_xor(unsigned char *dst, const unsigned char *src, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        dst[i] ^= src[i];
}

/* keylen * stripes into *total; 0 when the arguments are unusable. */
static int pyq_af_size(size_t keylen, size_t stripes, size_t *total)
{
    if (keylen == 0 || stripes == 0 || stripes > SIZE_MAX / keylen)
        return 0;
    *total = keylen * stripes;
    return 1;
}

int pyq_af_split(const EVP_MD *md, const unsigned char *key, size_t keylen,
                 size_t stripes, unsigned char *out, size_t outlen)
{
    EVP_MD_CTX *mctx;
    unsigned char *acc;
    size_t i, total;
    int ok = 1;

    if (md == NULL || key == NULL || out == NULL
        || !pyq_af_size(keylen, stripes, &total) || outlen < total)
        return -1;
    acc = pyq_secure_alloc(keylen);
    mctx = EVP_MD_CTX_new();
    if (acc == NULL || mctx == NULL) {
        pyq_secure_free(acc, keylen);
        EVP_MD_CTX_free(mctx);
        return 0;
    }
    if (stripes > 1)
        ok = RAND_bytes_ex(pyq_libctx(), out, total - keylen, 0);
    for (i = 0; ok && i + 1 < stripes; i++) {
        pyq_xor(acc, out + i * keylen, keylen);
        ok = pyq_diffuse(md, mctx, acc, keylen);
    }
    if (ok) {
        memcpy(out + total - keylen, key, keylen);
        pyq_xor(out + total - keylen, acc, keylen);
    }
    EVP_MD_CTX_free(mctx);
    pyq_secure_free(acc, keylen);
    return ok;
}

int pyq_af_merge(const EVP_MD *md, const unsigned char *in, size_t inlen,
                 size_t stripes, unsigned char *key, size_t keylen)
{
    EVP_MD_CTX *mctx;
    size_t i, total;
    int ok = 1;

    if (md == NULL || in == NULL || key == NULL
        || !pyq_af_size(keylen, stripes, &total) || inlen < total)
        return -1;
    mctx = EVP_MD_CTX_new();
    if (mctx == NULL)
        return 0;
    memset(key, 0, keylen);
    for (i = 0; ok && i + 1 < stripes; i++) {
        pyq_xor(key, in + i * keylen, keylen);
        ok = pyq_diffuse(md, mctx, key, keylen);
    }
    if (ok)
        pyq_xor(key, in + total - keylen, keylen);
    EVP_MD_CTX_free(mctx);
    return ok;
}
