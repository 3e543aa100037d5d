/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* One-shot digests and PBKDF2, on pyqcrypt's library context. */
#ifndef PYQ_DIGEST_H
#define PYQ_DIGEST_H

#include <openssl/evp.h>
#include <stddef.h>
#include <stdint.h>

/* The digest of len bytes at data into out, which holds outlen bytes: at
   least EVP_MD_get_size(md).  1 on success, 0 on an OpenSSL failure, -1
   when out is too short (nothing is written). */
int pyq_digest(const EVP_MD *md, const unsigned char *data, size_t len,
               unsigned char *out, size_t outlen);

/* PKCS#5 PBKDF2 with HMAC-mdname.  1 on success, 0 on failure. */
int pyq_pbkdf2(const char *mdname, const unsigned char *pass, size_t passlen,
               const unsigned char *salt, size_t saltlen, uint64_t iterations,
               unsigned char *out, size_t outlen);

#endif
