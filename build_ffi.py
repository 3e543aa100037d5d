# SPDX-License-Identifier: LGPL-2.1-or-later
"""cffi build scripts for pyqcrypt's native layer (API mode, out-of-line).

Three extension modules are built:

* ``pyqcrypt._crypto_native`` binds OpenSSL's libcrypto (EVP ciphers and
  digests, the PBKDF2 KDF, the DRBG, OPENSSL_cleanse, the error queue) and
  carries the small C routines whose speed or secrecy matters: the sector
  loop that encrypts a run of sectors with a per-sector IV while only the IV
  changes between sectors, the LUKS anti-forensic splitter, and page-locked
  key buffers.  All algorithms are fetched from a private OpenSSL library
  context holding the ``default`` and (when present) ``legacy`` providers, so
  the process's global OpenSSL configuration is never changed.
* ``pyqcrypt._cryptsetup_native`` binds the part of libcryptsetup pyqcrypt
  uses.  It is built only when pkg-config finds libcryptsetup.
* ``pyqcrypt._zstd_native`` binds libzstd's one-shot frame decoder, with a
  small C loop that decodes a qcow2 compressed cluster (QEMU's framing).
  It is built only when pkg-config finds libzstd.

Compiler and linker flags come from pkg-config; nothing is downloaded.
"""

import shlex
import shutil
import subprocess

from cffi import FFI


def _pkg_config(package):
    """Return (cflags, libs) lists for a pkg-config package, or None."""
    if shutil.which("pkg-config") is None:
        return None
    try:
        cflags = subprocess.run(["pkg-config", "--cflags", package], check=True,
                                capture_output=True, text=True).stdout
        libs = subprocess.run(["pkg-config", "--libs", package], check=True,
                              capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return shlex.split(cflags), shlex.split(libs)


def have_cryptsetup():
    """True when libcryptsetup's development files are installed."""
    return _pkg_config("libcryptsetup") is not None


def have_zstd():
    """True when libzstd's development files are installed."""
    return _pkg_config("libzstd") is not None


def _flags(package, fallback_libs):
    found = _pkg_config(package)
    if found is None:
        return {"libraries": fallback_libs}
    cflags, libs = found
    return {
        "include_dirs": [f[2:] for f in cflags if f.startswith("-I")],
        "extra_compile_args": [f for f in cflags if not f.startswith("-I")],
        "library_dirs": [f[2:] for f in libs if f.startswith("-L")],
        "libraries": [f[2:] for f in libs if f.startswith("-l")],
        "extra_link_args": [f for f in libs if not f.startswith(("-L", "-l"))],
    }


CRYPTO_CDEF = """
typedef ... OSSL_LIB_CTX;
typedef ... EVP_CIPHER;
typedef ... EVP_MD;

/* error queue */
unsigned long ERR_get_error(void);
void ERR_error_string_n(unsigned long e, char *buf, size_t len);
void ERR_clear_error(void);
unsigned long OpenSSL_version_num(void);
const char *OpenSSL_version(int type);

/* algorithm objects, fetched from pyqcrypt's own library context */
OSSL_LIB_CTX *pyq_libctx(void);
int pyq_legacy_loaded(void);
EVP_CIPHER *EVP_CIPHER_fetch(OSSL_LIB_CTX *ctx, const char *algorithm,
                             const char *properties);
void EVP_CIPHER_free(EVP_CIPHER *cipher);
int EVP_CIPHER_get_key_length(const EVP_CIPHER *cipher);
int EVP_CIPHER_get_iv_length(const EVP_CIPHER *cipher);
int EVP_CIPHER_get_block_size(const EVP_CIPHER *cipher);
EVP_MD *EVP_MD_fetch(OSSL_LIB_CTX *ctx, const char *algorithm,
                     const char *properties);
void EVP_MD_free(EVP_MD *md);
int EVP_MD_get_size(const EVP_MD *md);

/* one-shot cipher contexts (secrets, not sectors) */
typedef ... EVP_CIPHER_CTX;
EVP_CIPHER_CTX *EVP_CIPHER_CTX_new(void);
void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX *ctx);
int EVP_CipherInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *type, void *impl,
                      const unsigned char *key, const unsigned char *iv, int enc);
int EVP_CipherUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl,
                     const unsigned char *in, int inl);
int EVP_CipherFinal_ex(EVP_CIPHER_CTX *ctx, unsigned char *outm, int *outl);
int EVP_CIPHER_CTX_set_padding(EVP_CIPHER_CTX *ctx, int pad);

/* randomness, wiping, digests, PBKDF2 */
int RAND_bytes_ex(OSSL_LIB_CTX *ctx, unsigned char *buf, size_t num,
                  unsigned int strength);
void OPENSSL_cleanse(void *ptr, size_t len);
int CRYPTO_memcmp(const void *a, const void *b, size_t len);
int pyq_digest(const EVP_MD *md, const unsigned char *data, size_t len,
               unsigned char *out);
int pyq_pbkdf2(const char *mdname, const unsigned char *pass, size_t passlen,
               const unsigned char *salt, size_t saltlen, uint64_t iterations,
               unsigned char *out, size_t outlen);
int PKCS5_PBKDF2_HMAC(const char *pass, int passlen,
                      const unsigned char *salt, int saltlen, int iter,
                      const EVP_MD *digest, int keylen, unsigned char *out);

/* page-locked buffers for key material */
unsigned char *pyq_secure_alloc(size_t size);
void pyq_secure_free(unsigned char *ptr, size_t size);

/* sector cipher */
#define PYQ_IV_NONE ...
#define PYQ_IV_PLAIN ...
#define PYQ_IV_PLAIN64 ...
#define PYQ_IV_PLAIN64BE ...
#define PYQ_IV_ESSIV ...
typedef struct pyq_sector_ctx pyq_sector_ctx;
pyq_sector_ctx *pyq_sector_new(const EVP_CIPHER *cipher,
                               const unsigned char *key, size_t keylen,
                               int ivmode, const EVP_CIPHER *essiv_cipher,
                               const unsigned char *essiv_key,
                               size_t essiv_keylen, int enc);
void pyq_sector_free(pyq_sector_ctx *ctx);
int pyq_sector_direct_path(pyq_sector_ctx *ctx);
int pyq_sector_crypt(pyq_sector_ctx *ctx, unsigned char *buf, size_t len,
                     size_t sector_size, uint64_t first_sector);

/* Linux kernel keyring: KEYCTL_READ (negative errno on failure) */
long pyq_keyctl_read(int32_t serial, unsigned char *buf, size_t len);

/* qcow2: n big-endian L2 entries (first + i*step) | COPIED */
void pyq_fill_identity_l2(unsigned char *buf, size_t n, uint64_t first, uint64_t step);

/* QEMU-compatible image locks (open file description byte locks) */
int pyq_ofd_lock(int fd, int64_t start, int64_t len, int shared);
int pyq_ofd_test(int fd, int64_t start, int64_t len);

/* LUKS anti-forensic splitter */
int pyq_af_split(const EVP_MD *md, const unsigned char *key, size_t blocksize,
                 size_t stripes, unsigned char *out);
int pyq_af_merge(const EVP_MD *md, const unsigned char *in, size_t blocksize,
                 size_t stripes, unsigned char *key);
"""

CRYPTO_SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/core.h>
#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/provider.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PYQ_IV_NONE 0
#define PYQ_IV_PLAIN 1
#define PYQ_IV_PLAIN64 2
#define PYQ_IV_PLAIN64BE 3
#define PYQ_IV_ESSIV 4

/* ---- private library context ---------------------------------------- */

static OSSL_LIB_CTX *pyq_ctx;
static int pyq_have_legacy;
static pthread_once_t pyq_ctx_once = PTHREAD_ONCE_INIT;

static void pyq_ctx_init(void)
{
    OSSL_LIB_CTX *ctx = OSSL_LIB_CTX_new();
    if (ctx == NULL)
        return;
    if (OSSL_PROVIDER_load(ctx, "default") == NULL) {
        OSSL_LIB_CTX_free(ctx);
        return;
    }
    /* cast5, whirlpool and friends live in the legacy provider; it is
       optional, and its absence only makes those algorithms unavailable. */
    pyq_have_legacy = OSSL_PROVIDER_load(ctx, "legacy") != NULL;
    ERR_clear_error();
    pyq_ctx = ctx;
}

OSSL_LIB_CTX *pyq_libctx(void)
{
    pthread_once(&pyq_ctx_once, pyq_ctx_init);
    return pyq_ctx;
}

int pyq_legacy_loaded(void)
{
    pyq_libctx();
    return pyq_have_legacy;
}

/* ---- digests and PBKDF2 --------------------------------------------- */

int pyq_digest(const EVP_MD *md, const unsigned char *data, size_t len,
               unsigned char *out)
{
    unsigned int outlen = 0;
    return EVP_Digest(data, len, out, &outlen, md, NULL);
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

/* ---- key buffers ----------------------------------------------------- */

static size_t pyq_round_pages(size_t size)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t p = page > 0 ? (size_t)page : 4096;
    if (size == 0)
        size = 1;
    return (size + p - 1) / p * p;
}

/* Page-aligned, whole pages, so that munlock of one buffer can never unlock
   a neighbour; locked in RAM and kept out of core dumps where permitted. */
unsigned char *pyq_secure_alloc(size_t size)
{
    void *p = NULL;
    size_t len = pyq_round_pages(size);
    long page = sysconf(_SC_PAGESIZE);
    if (posix_memalign(&p, page > 0 ? (size_t)page : 4096, len) != 0)
        return NULL;
    memset(p, 0, len);
    (void)mlock(p, len);
#ifdef MADV_DONTDUMP
    (void)madvise(p, len, MADV_DONTDUMP);
#endif
    return p;
}

void pyq_secure_free(unsigned char *ptr, size_t size)
{
    size_t len;
    if (ptr == NULL)
        return;
    len = pyq_round_pages(size);
    OPENSSL_cleanse(ptr, len);
    (void)munlock(ptr, len);
    free(ptr);
}

/* ---- sector cipher --------------------------------------------------- */

/* Changing the IV through EVP_CipherInit_ex() costs as much as encrypting a
   512-byte sector in OpenSSL 3, so where the implementing provider exposes
   its cipher functions (provider-cipher(7), reached through the public
   OSSL_PROVIDER_query_operation()), the loop calls them directly: one init
   call that sets only the IV, one cipher call per sector.  The EVP path
   remains as a fallback. */

typedef struct pyq_sector_ctx pyq_sector_ctx;
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
    struct pyq_sector_ctx *s = calloc(1, sizeof(*s));
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
    if (!pyq_sector_direct(s, cipher, key, keylen, enc)) {
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

/* Encrypt or decrypt len bytes in place: len / sector_size sectors, the
   first one numbered first_sector.  Returns 1 on success, 0 on an OpenSSL
   failure (details on the error queue), -1 on bad arguments. */
int pyq_sector_crypt(struct pyq_sector_ctx *s, unsigned char *buf, size_t len,
                     size_t sector_size, uint64_t first_sector)
{
    unsigned char iv[EVP_MAX_IV_LENGTH];
    unsigned char block[EVP_MAX_IV_LENGTH];
    uint64_t sector = first_sector;
    size_t off, outl;
    int i;

    if (s == NULL || sector_size == 0 || sector_size > (1u << 20)
        || len % sector_size != 0 || sector_size % (size_t)s->block != 0)
        return -1;
    for (off = 0; off < len; off += sector_size, sector++) {
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

/* ---- kernel keyring ---------------------------------------------------- */

long pyq_keyctl_read(int32_t serial, unsigned char *buf, size_t len)
{
#ifdef SYS_keyctl
    long r = syscall(SYS_keyctl, 11L /* KEYCTL_READ */, (long)serial, buf, (long)len, 0L);
    return r < 0 ? -errno : r;
#else
    (void)serial; (void)buf; (void)len;
    return -ENOSYS;
#endif
}

/* ---- qcow2 helpers ---------------------------------------------------- */

void pyq_fill_identity_l2(unsigned char *buf, size_t n, uint64_t first, uint64_t step)
{
    size_t i;
    int b;
    uint64_t v;
    for (i = 0; i < n; i++) {
        v = (first + i * step) | ((uint64_t)1 << 63);
        for (b = 0; b < 8; b++)
            buf[i * 8 + b] = (unsigned char)(v >> (56 - 8 * b));
    }
}

/* ---- image locks ------------------------------------------------------ */

/* Take (shared != 0) or drop a shared OFD lock on [start, start+len). */
int pyq_ofd_lock(int fd, int64_t start, int64_t len, int shared)
{
    struct flock fl;
    memset(&fl, 0, sizeof(fl));
    fl.l_type = shared ? F_RDLCK : F_UNLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = start;
    fl.l_len = len;
    return fcntl(fd, F_OFD_SETLK, &fl) == -1 ? -errno : 0;
}

/* 1 when another open file description holds a lock in the range. */
int pyq_ofd_test(int fd, int64_t start, int64_t len)
{
    struct flock fl;
    memset(&fl, 0, sizeof(fl));
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = start;
    fl.l_len = len;
    if (fcntl(fd, F_OFD_GETLK, &fl) == -1)
        return -errno;
    return fl.l_type != F_UNLCK;
}

/* ---- anti-forensic splitter (LUKS1 on-disk format, section AF) -------- */

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

int pyq_af_split(const EVP_MD *md, const unsigned char *key, size_t blocksize,
                 size_t stripes, unsigned char *out)
{
    EVP_MD_CTX *mctx;
    unsigned char *acc;
    size_t i;
    int ok = 1;

    if (stripes == 0 || blocksize == 0)
        return -1;
    acc = pyq_secure_alloc(blocksize);
    mctx = EVP_MD_CTX_new();
    if (acc == NULL || mctx == NULL) {
        pyq_secure_free(acc, blocksize);
        EVP_MD_CTX_free(mctx);
        return 0;
    }
    if (stripes > 1)
        ok = RAND_bytes_ex(pyq_libctx(), out, blocksize * (stripes - 1), 0);
    for (i = 0; ok && i + 1 < stripes; i++) {
        pyq_xor(acc, out + i * blocksize, blocksize);
        ok = pyq_diffuse(md, mctx, acc, blocksize);
    }
    if (ok) {
        memcpy(out + (stripes - 1) * blocksize, key, blocksize);
        pyq_xor(out + (stripes - 1) * blocksize, acc, blocksize);
    }
    EVP_MD_CTX_free(mctx);
    pyq_secure_free(acc, blocksize);
    return ok;
}

int pyq_af_merge(const EVP_MD *md, const unsigned char *in, size_t blocksize,
                 size_t stripes, unsigned char *key)
{
    EVP_MD_CTX *mctx;
    size_t i;
    int ok = 1;

    if (stripes == 0 || blocksize == 0)
        return -1;
    mctx = EVP_MD_CTX_new();
    if (mctx == NULL)
        return 0;
    memset(key, 0, blocksize);
    for (i = 0; ok && i + 1 < stripes; i++) {
        pyq_xor(key, in + i * blocksize, blocksize);
        ok = pyq_diffuse(md, mctx, key, blocksize);
    }
    if (ok)
        pyq_xor(key, in + (stripes - 1) * blocksize, blocksize);
    EVP_MD_CTX_free(mctx);
    return ok;
}
"""

CRYPTSETUP_CDEF = """
struct crypt_device;
#define CRYPT_ANY_SLOT ...
typedef enum {
    CRYPT_SLOT_INVALID, CRYPT_SLOT_INACTIVE, CRYPT_SLOT_ACTIVE,
    CRYPT_SLOT_ACTIVE_LAST, CRYPT_SLOT_UNBOUND
} crypt_keyslot_info;
int crypt_init(struct crypt_device **cd, const char *device);
int crypt_init_data_device(struct crypt_device **cd, const char *device,
                           const char *data_device);
void crypt_free(struct crypt_device *cd);
int crypt_load(struct crypt_device *cd, const char *requested_type,
               void *params);
const char *crypt_get_type(struct crypt_device *cd);
const char *crypt_get_cipher(struct crypt_device *cd);
const char *crypt_get_cipher_mode(struct crypt_device *cd);
const char *crypt_get_uuid(struct crypt_device *cd);
uint64_t crypt_get_data_offset(struct crypt_device *cd);
int crypt_get_volume_key_size(struct crypt_device *cd);
int crypt_get_sector_size(struct crypt_device *cd);
crypt_keyslot_info crypt_keyslot_status(struct crypt_device *cd, int keyslot);
int crypt_volume_key_get(struct crypt_device *cd, int keyslot,
                         char *volume_key, size_t *volume_key_size,
                         const char *passphrase, size_t passphrase_size);
void crypt_set_debug_level(int level);
int crypt_dump(struct crypt_device *cd);
void pyq_cs_quiet(struct crypt_device *cd);
"""

ffi_crypto = FFI()
ffi_crypto.cdef(CRYPTO_CDEF)
ffi_crypto.set_source("pyqcrypt._crypto_native", CRYPTO_SOURCE,
                      **_flags("libcrypto", ["crypto"]))

ffi_cryptsetup = FFI()
ffi_cryptsetup.cdef(CRYPTSETUP_CDEF)
ffi_cryptsetup.set_source("pyqcrypt._cryptsetup_native", r"""
#include <libcryptsetup.h>

/* libcryptsetup logs to stderr by default; pyqcrypt reports errors itself. */
static void pyq_cs_ignore(int level, const char *msg, void *usrptr)
{
    (void)level; (void)msg; (void)usrptr;
}

void pyq_cs_quiet(struct crypt_device *cd)
{
    crypt_set_log_callback(cd, pyq_cs_ignore, NULL);
}
""",
                          **_flags("libcryptsetup", ["cryptsetup"]))

ZSTD_CDEF = """
typedef ... ZSTD_DCtx;
ZSTD_DCtx *ZSTD_createDCtx(void);
size_t ZSTD_freeDCtx(ZSTD_DCtx *dctx);
unsigned ZSTD_versionNumber(void);
long pyq_zstd_cluster(ZSTD_DCtx *dctx, unsigned char *dst, size_t dstlen,
                      const unsigned char *src, size_t srclen, const char **why);
"""

ZSTD_SOURCE = r"""
#include <stdint.h>
#include <zstd.h>

/* Decode a qcow2 compressed cluster as QEMU's qcow2_zstd_decompress()
   does: zstd frames, one after another from the start of src, until dst
   holds exactly dstlen bytes; what follows the frame that completes the
   cluster is ignored (the L2 entry gives the compressed size only to the
   sector).  Each frame is measured first, then decoded in one shot straight
   into dst, so no window buffer is ever allocated, no frame may produce
   more than the room left, and every pass consumes input (no loop can
   spin).  Only current zstd frames and skippable frames are accepted, never
   the legacy (pre-1.0) formats, which QEMU's encoder never writes.
   Returns dstlen, or -1 with *why set to a static message. */
long pyq_zstd_cluster(ZSTD_DCtx *dctx, unsigned char *dst, size_t dstlen,
                      const unsigned char *src, size_t srclen, const char **why)
{
    size_t in = 0, out = 0, fsize, n;
    uint32_t magic;

    *why = NULL;
    if (dctx == NULL || dstlen > ((size_t)1 << 30)) {
        *why = "bad arguments";
        return -1;
    }
    while (out < dstlen) {
        if (srclen - in < 4) {
            *why = "the compressed data ends before the cluster is complete";
            return -1;
        }
        magic = (uint32_t)src[in] | (uint32_t)src[in + 1] << 8
                | (uint32_t)src[in + 2] << 16 | (uint32_t)src[in + 3] << 24;
        if (magic != ZSTD_MAGICNUMBER
            && (magic & ZSTD_MAGIC_SKIPPABLE_MASK) != ZSTD_MAGIC_SKIPPABLE_START) {
            *why = "no zstd frame where one should start";
            return -1;
        }
        fsize = ZSTD_findFrameCompressedSize(src + in, srclen - in);
        if (ZSTD_isError(fsize)) {
            *why = ZSTD_getErrorName(fsize);
            return -1;
        }
        n = ZSTD_decompressDCtx(dctx, dst + out, dstlen - out, src + in, fsize);
        if (ZSTD_isError(n)) {
            *why = ZSTD_getErrorName(n);
            return -1;
        }
        in += fsize;
        out += n;
    }
    return (long)out;
}
"""

ffi_zstd = FFI()
ffi_zstd.cdef(ZSTD_CDEF)
ffi_zstd.set_source("pyqcrypt._zstd_native", ZSTD_SOURCE, **_flags("libzstd", ["zstd"]))

if __name__ == "__main__":
    ffi_crypto.compile(verbose=True)
    if have_cryptsetup():
        ffi_cryptsetup.compile(verbose=True)
    if have_zstd():
        ffi_zstd.compile(verbose=True)
