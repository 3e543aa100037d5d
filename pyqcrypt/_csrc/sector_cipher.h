/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The sector cipher: runs of disk sectors encrypted in place, each with
   an IV made from its sector number. */
#ifndef PYQ_SECTOR_CIPHER_H
#define PYQ_SECTOR_CIPHER_H

#include <openssl/evp.h>
#include <stddef.h>
#include <stdint.h>

/* IV generators, dm-crypt's: none (ECB), plain (sector number, 32-bit
   little-endian), plain64 (64-bit little-endian), plain64be (64-bit
   big-endian, at the end of the IV), essiv (plain64 encrypted with the
   hash of the key).  This enum is the only definition of the codes: the
   cdef exports its names and Python reads their values from the module. */
enum pyq_iv_mode {
    PYQ_IV_NONE = 0,
    PYQ_IV_PLAIN,
    PYQ_IV_PLAIN64,
    PYQ_IV_PLAIN64BE,
    PYQ_IV_ESSIV
};

typedef struct pyq_sector_ctx pyq_sector_ctx;

/* A context keyed once for one direction (enc 1: encrypt, 0: decrypt);
   ivmode is an enum pyq_iv_mode;
   essiv_cipher and essiv_key (hash of the key) only for PYQ_IV_ESSIV.
   NULL on failure, including a NULL cipher or key, an unknown ivmode and
   key lengths that are not the ciphers' own. */
pyq_sector_ctx *pyq_sector_new(const EVP_CIPHER *cipher,
                               const unsigned char *key, size_t keylen,
                               int ivmode, const EVP_CIPHER *essiv_cipher,
                               const unsigned char *essiv_key,
                               size_t essiv_keylen, int enc);
void pyq_sector_free(pyq_sector_ctx *ctx);

/* 1 when ctx calls the provider's cipher functions directly, 0 when it
   goes through EVP. */
int pyq_sector_direct_path(pyq_sector_ctx *ctx);

/* With on != 0, contexts made from now on take the EVP path even where the
   direct one is available (so that tests can run known answers through
   both); on == 0 restores the default.  Contexts already made keep their
   path.  Returns the previous setting. */
int pyq_force_evp_fallback(int on);

/* Encrypt or decrypt len bytes in place: len / sector_size units, unit k
   taking the IV number first_sector + k * iv_step (iv_step is
   sector_size / 512 for a LUKS2 segment of larger sectors, whose IVs count
   512-byte sectors, and 1 elsewhere).  1 on success, 0 on an OpenSSL
   failure (details on the error queue), -1 on bad arguments, among them
   iv_step 0 and a last IV number past 2^64 - 1. */
int pyq_sector_crypt(pyq_sector_ctx *ctx, unsigned char *buf, size_t len,
                     size_t sector_size, uint64_t first_sector, uint64_t iv_step);

#endif
