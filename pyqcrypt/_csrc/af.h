/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The LUKS anti-forensic information splitter. */
#ifndef PYQ_AF_H
#define PYQ_AF_H

#include <openssl/evp.h>
#include <stddef.h>

/* Split a blocksize-byte key into blocksize * stripes bytes at out.
   1 on success, 0 on an OpenSSL failure, -1 on bad arguments. */
int pyq_af_split(const EVP_MD *md, const unsigned char *key, size_t blocksize,
                 size_t stripes, unsigned char *out);

/* Recombine blocksize * stripes bytes at in into a blocksize-byte key.
   1 on success, 0 on an OpenSSL failure, -1 on bad arguments. */
int pyq_af_merge(const EVP_MD *md, const unsigned char *in, size_t blocksize,
                 size_t stripes, unsigned char *key);

#endif
