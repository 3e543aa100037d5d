/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* cffi cdef (not compiled): pyqcrypt's own C routines in the libgcrypt
   module (gcrypt_sector.h). */

#define PYQ_GC_SECTOR_SIZE 512
#define PYQ_GC_MAX_UNIT 4096
#define PYQ_GC_OK 0
#define PYQ_GC_EINVAL -1
#define PYQ_GC_ENOTSUP -2
#define PYQ_GC_EKEYLEN -3
#define PYQ_GC_ENOMEM -4
#define PYQ_GC_ECRYPTO -5
#define PYQ_GC_EINIT -6
#define PYQ_GC_ELEN -7
#define PYQ_GC_IV_NULL 0
#define PYQ_GC_IV_PLAIN 1
#define PYQ_GC_IV_PLAIN64 2
#define PYQ_GC_IV_PLAIN64BE 3
#define PYQ_GC_IV_ESSIV 4
#define PYQ_GC_IV_BENBI 5

typedef struct pyq_gc_ctx pyq_gc_ctx;

int pyq_gc_init(void);
const char *pyq_gc_version(void);
int pyq_gc_nettle_version(void);
const char *pyq_gc_strerror(int err);
int pyq_gc_ivmode_from_name(const char *name);
int pyq_gc_ctx_new(pyq_gc_ctx **out, const char *cipher, const char *mode,
                   const unsigned char *key, size_t keylen,
                   int ivmode, const char *ivhash);
void pyq_gc_ctx_free(pyq_gc_ctx *ctx);
size_t pyq_gc_ctx_block_size(const pyq_gc_ctx *ctx);
size_t pyq_gc_ctx_iv_size(const pyq_gc_ctx *ctx);
int pyq_gc_ctx_builtin(const pyq_gc_ctx *ctx);
int pyq_gc_crypt(pyq_gc_ctx *ctx, int encrypt, unsigned char *buf,
                 size_t len, uint64_t first_sector);
int pyq_gc_crypt_units(pyq_gc_ctx *ctx, int encrypt, unsigned char *buf, size_t len,
                       size_t unit_size, uint64_t first_sector, uint64_t iv_step);
int pyq_gc_crypt_iv(pyq_gc_ctx *ctx, int encrypt, unsigned char *buf,
                    size_t len, const unsigned char *iv, size_t ivlen);
int pyq_gc_hash(const char *name, const void *data, size_t len,
                unsigned char *out, size_t outlen);
int pyq_gc_hash_len(const char *name);
int pyq_gc_pbkdf2(const char *hashname, const void *pass, size_t passlen,
                  const void *salt, size_t saltlen, unsigned long iterations,
                  unsigned char *out, size_t outlen);
