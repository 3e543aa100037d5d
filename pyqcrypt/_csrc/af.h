/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The LUKS anti-forensic information splitter. */
#ifndef PYQ_AF_H
#define PYQ_AF_H

#include <openssl/evp.h>
#include <stddef.h>

/* The block size is the key's length, keylen.  Both functions return 1 on
   success, 0 on an OpenSSL failure, and -1 without touching any buffer on
   bad arguments: a NULL pointer, keylen or stripes 0, keylen * stripes
   overflowing, or a split buffer (outlen, inlen) shorter than that. */

/* Split the keylen-byte key into keylen * stripes bytes at out. */
int pyq_af_split(const EVP_MD *md, const unsigned char *key, size_t keylen,
                 size_t stripes, unsigned char *out, size_t outlen);

/* Recombine the first keylen * stripes bytes at in into the keylen-byte
   buffer key. */
int pyq_af_merge(const EVP_MD *md, const unsigned char *in, size_t inlen,
                 size_t stripes, unsigned char *key, size_t keylen);

#endif
