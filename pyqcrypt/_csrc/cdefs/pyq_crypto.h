/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* cffi cdef (not compiled): pyqcrypt's own C routines in the libcrypto
   module (pyqcrypt/_csrc/*.c; their headers say what each does). */

/* libctx.h */
OSSL_LIB_CTX *pyq_libctx(void);
int pyq_legacy_loaded(void);

/* digest.h */
int pyq_digest(const EVP_MD *md, const unsigned char *data, size_t len,
               unsigned char *out, size_t outlen);
int pyq_pbkdf2(const char *mdname, const unsigned char *pass, size_t passlen,
               const unsigned char *salt, size_t saltlen, uint64_t iterations,
               unsigned char *out, size_t outlen);

/* secmem.h */
unsigned char *pyq_secure_alloc(size_t size);
void pyq_secure_free(unsigned char *ptr, size_t size);

/* sector_cipher.h */
/* the values come from the C header ("..."): they are defined there only */
enum pyq_iv_mode {
    PYQ_IV_NONE, PYQ_IV_PLAIN, PYQ_IV_PLAIN64, PYQ_IV_PLAIN64BE, PYQ_IV_ESSIV, ...
};
typedef struct pyq_sector_ctx pyq_sector_ctx;
pyq_sector_ctx *pyq_sector_new(const EVP_CIPHER *cipher,
                               const unsigned char *key, size_t keylen,
                               int ivmode, const EVP_CIPHER *essiv_cipher,
                               const unsigned char *essiv_key,
                               size_t essiv_keylen, int enc);
void pyq_sector_free(pyq_sector_ctx *ctx);
int pyq_sector_direct_path(pyq_sector_ctx *ctx);
int pyq_force_evp_fallback(int on);
int pyq_sector_crypt(pyq_sector_ctx *ctx, unsigned char *buf, size_t len,
                     size_t sector_size, uint64_t first_sector, uint64_t iv_step);

/* af.h */
int pyq_af_split(const EVP_MD *md, const unsigned char *key, size_t keylen,
                 size_t stripes, unsigned char *out, size_t outlen);
int pyq_af_merge(const EVP_MD *md, const unsigned char *in, size_t inlen,
                 size_t stripes, unsigned char *key, size_t keylen);
