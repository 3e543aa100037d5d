/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * gcrypt_sector.h - sector cipher loop on libgcrypt (and GNU Nettle's
 * Twofish for 192-bit keys) for pyqcrypt.
 *
 * dm-crypt / LUKS1 / qcow2-luks style sector encryption: a buffer of whole
 * 512-byte sectors (or, through pyq_gc_crypt_units, of LUKS2 data units up
 * to 4096 bytes) is processed in place, each with the IV the dm-crypt IV
 * generator would produce for its sector number.
 *
 * The key schedule is expanded once per context (gcry_cipher_open and
 * gcry_cipher_setkey happen in pyq_gc_ctx_new only); per sector only the IV
 * changes.  A context must not be used by two threads at the same time;
 * create one context per worker thread (contexts are cheap, except LRW which
 * carries a 64 KiB multiplication table).
 *
 * All functions return 0 on success or a negative PYQ_GC_E* code.
 */
#ifndef PYQ_GCRYPT_SECTOR_H
#define PYQ_GCRYPT_SECTOR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PYQ_GC_SECTOR_SIZE 512
#define PYQ_GC_MAX_UNIT 4096   /* the largest unit pyq_gc_crypt_units takes */

/* error codes (all negative) */
#define PYQ_GC_OK          0
#define PYQ_GC_EINVAL     -1   /* bad argument (NULL, length, flag) */
#define PYQ_GC_ENOTSUP    -2   /* cipher / mode / IV mode / hash not available */
#define PYQ_GC_EKEYLEN    -3   /* key length not valid for cipher+mode */
#define PYQ_GC_ENOMEM     -4
#define PYQ_GC_ECRYPTO    -5   /* libgcrypt reported an error */
#define PYQ_GC_EINIT      -6   /* libgcrypt missing, too old or not initialised */
#define PYQ_GC_ELEN       -7   /* length not a multiple of the sector/block size */

/* IV generator codes (dm-crypt names) */
#define PYQ_GC_IV_NULL       0  /* all-zero IV ("null"; the only choice for ecb) */
#define PYQ_GC_IV_PLAIN      1  /* 32-bit little-endian sector number */
#define PYQ_GC_IV_PLAIN64    2  /* 64-bit little-endian sector number */
#define PYQ_GC_IV_PLAIN64BE  3  /* 64-bit big-endian sector number in the LAST 8 IV bytes */
#define PYQ_GC_IV_ESSIV      4  /* E_{H(volume key)}(plain64); needs a hash name */
#define PYQ_GC_IV_BENBI      5  /* big-endian narrow-block count: BE64((s << (9-log2 bs)) + 1) in last 8 bytes */

/* Initialise libgcrypt (idempotent, thread-safe through pthread_once).
 * If the application already finished libgcrypt initialisation it is left
 * alone; otherwise secure memory is disabled (the volume key already lives
 * in ordinary Python memory; do_init in gcrypt_sector.c says why) and
 * initialisation is finished.  Returns 0 or PYQ_GC_EINIT. */
int pyq_gc_init(void);

/* libgcrypt runtime version string, or NULL before pyq_gc_init(). */
const char *pyq_gc_version(void);

/* GNU Nettle's version as major * 1000 + minor, from the library loaded
 * (nettle_version_major/minor, Nettle 3.1 and later); -1 when this build
 * has no Nettle. */
int pyq_gc_nettle_version(void);

/* Static English text for an error code. */
const char *pyq_gc_strerror(int err);

/* Map a dm-crypt IV generator name ("plain64", "essiv", "null", ...) to a
 * PYQ_GC_IV_* code; the ":hash" part of "essiv:sha256" is ignored here.
 * Returns the code (>= 0) or PYQ_GC_ENOTSUP. */
int pyq_gc_ivmode_from_name(const char *name);

typedef struct pyq_gc_ctx pyq_gc_ctx;

/*
 * Create a sector cipher context.
 *   cipher : "aes", "serpent", "twofish", "cast5" (cast6 is not in libgcrypt)
 *   mode   : "xts", "cbc", "ecb", "lrw"
 *   key    : volume key; xts: two equal halves (data key || tweak key);
 *            lrw: cipher key || 16-byte tweak key (kernel lrw() layout)
 *   ivmode : PYQ_GC_IV_*; ecb requires PYQ_GC_IV_NULL
 *   ivhash : hash name for ESSIV ("sha256", "sha1", "wp256", "rmd160", ...),
 *            NULL otherwise
 * Twofish with a 192-bit (per-half) key is served by GNU Nettle's Twofish
 * because libgcrypt only has 128/256-bit Twofish; in a build without
 * Nettle (PYQ_HAVE_NETTLE undefined) such a context is PYQ_GC_ENOTSUP.
 */
int pyq_gc_ctx_new(pyq_gc_ctx **out, const char *cipher, const char *mode,
                   const unsigned char *key, size_t keylen,
                   int ivmode, const char *ivhash);

void pyq_gc_ctx_free(pyq_gc_ctx *ctx);

/* Cipher block size (16, or 8 for cast5) and IV size (0 for ecb). */
size_t pyq_gc_ctx_block_size(const pyq_gc_ctx *ctx);
size_t pyq_gc_ctx_iv_size(const pyq_gc_ctx *ctx);
/* 1 if the context's cipher is GNU Nettle's Twofish (192-bit keys)
 * instead of libgcrypt's.  (The name dates from a hand-written Twofish.) */
int pyq_gc_ctx_builtin(const pyq_gc_ctx *ctx);

/* Process len/512 sectors of buf in place, the first one having sector
 * number first_sector (IV numbering; sector numbers wrap modulo 2^64 like
 * dm-crypt).  encrypt: 1 = encrypt, 0 = decrypt.  len must be a multiple
 * of 512; len == 0 is a no-op. */
int pyq_gc_crypt(pyq_gc_ctx *ctx, int encrypt, unsigned char *buf,
                 size_t len, uint64_t first_sector);

/* Process len/unit_size data units of buf in place (LUKS2 segments with
 * sector sizes above 512): unit k has IV number first_sector + k * iv_step.
 * dm-crypt without iv_large_sectors numbers a unit by its offset in
 * 512-byte sectors, so iv_step = unit_size / 512 there.  unit_size must lie
 * in 512..PYQ_GC_MAX_UNIT (else PYQ_GC_EINVAL) and be a multiple of 16 and
 * of the block size, and len a multiple of unit_size (else PYQ_GC_ELEN);
 * iv_step 0 and a last IV number past 2^64 - 1 are PYQ_GC_EINVAL (unlike
 * pyq_gc_crypt, nothing wraps).  Every mode and IV generator works on any
 * such unit: the IV is made for the unit's first block, the mode chains or
 * tweaks block by block through the whole unit (for lrw the block index
 * runs on through the unit, as in the kernel's lrw() on one request). */
int pyq_gc_crypt_units(pyq_gc_ctx *ctx, int encrypt, unsigned char *buf, size_t len,
                       size_t unit_size, uint64_t first_sector, uint64_t iv_step);

/* Process ONE data unit of len bytes (multiple of the block size, > 0)
 * in place with an explicit IV of pyq_gc_ctx_iv_size() bytes (ignored for
 * ecb).  For lrw the IV is the 128-bit big-endian index of the first block,
 * as in the kernel.  Meant for known-answer tests and raw use. */
int pyq_gc_crypt_iv(pyq_gc_ctx *ctx, int encrypt, unsigned char *buf,
                    size_t len, const unsigned char *iv, size_t ivlen);

/* Hash helper with kernel/cryptsetup/QEMU hash names (incl. "wp256",
 * "wp384", "rmd160", "ripemd160", "whirlpool").  Writes the digest (or its
 * truncation for wp256/wp384) to out; returns the digest length written
 * or a negative error code (PYQ_GC_EINVAL if outlen is too small). */
int pyq_gc_hash(const char *name, const void *data, size_t len,
                unsigned char *out, size_t outlen);

/* Digest length of a hash name, or a negative error code. */
int pyq_gc_hash_len(const char *name);

/* PBKDF2-HMAC(name) via gcry_kdf_derive (LUKS1 keyslots/digests; gives
 * whirlpool and ripemd160 independent of OpenSSL providers). */
int pyq_gc_pbkdf2(const char *hashname, const void *pass, size_t passlen,
                  const void *salt, size_t saltlen, unsigned long iterations,
                  unsigned char *out, size_t outlen);

#ifdef __cplusplus
}
#endif

#endif /* PYQ_GCRYPT_SECTOR_H */
