/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * gcrypt_sector.c - sector cipher loop on libgcrypt (and GNU Nettle) for
 * pyqcrypt.
 *
 * Modes:  cbc (libgcrypt CBC, one call per sector; encryption interleaves
 *         16 sectors' chains through the bulk engine), xts (libgcrypt XTS
 *         for aes; for serpent/twofish built here on bulk primitives), ecb
 *         (one call per buffer), lrw (kernel lrw() template: ECB of the
 *         block cipher plus a GF(2^128) tweak, implemented here).
 * IVs:    null, plain, plain64, plain64be, essiv:HASH, benbi (dm-crypt).
 * Ciphers: aes, serpent, twofish, cast5 from libgcrypt; twofish with a
 *         192-bit key from GNU Nettle (libgcrypt has only 128- and 256-bit
 *         Twofish; built with PYQ_HAVE_NETTLE, else it is PYQ_GC_ENOTSUP).
 *         No block cipher is written here: this file has modes, IVs and the
 *         LRW tweak arithmetic only.
 * Speed:  libgcrypt 1.10 has multi-block code for serpent/twofish only in
 *         CBC/CFB decryption and CTR, so "E_K of n arbitrary blocks" is done
 *         with CFB decryption and "D_K of n blocks" with CBC decryption
 *         (engine_bulk); key schedules are expanded once per context.
 *         Nettle's serpent and twofish were measured against these bulk
 *         paths (ci/bench_gcrypt.py --key-bits 256,384,512) and are slower
 *         at 128 and 256 bits, so libgcrypt keeps those.
 *
 * Sources:
 *   XTS    IEEE Std 1619-2007 and the Linux kernel's crypto/xts.c: key =
 *          data key K1 || tweak key K2, T_0 = E_K2(IV), T_{j+1} = T_j * x
 *          in GF(2^128) mod x^128+x^7+x^2+x+1 on the little-endian block,
 *          C_j = E_K1(P_j ^ T_j) ^ T_j.
 *   LRW    M. Liskov, R. L. Rivest, D. Wagner, "Tweakable Block Ciphers",
 *          CRYPTO 2002 (LNCS 2442): C = E_K1(P ^ h(I)) ^ h(I) with the
 *          xor-universal h(I) = K2 (x) I; as the IEEE P1619 drafts'
 *          LRW-AES (Cyril Guyot's text for the P1619 work group, draft D4,
 *          whose vector 1 is in tests/test_gcrypt_vectors.py) and as the
 *          Linux kernel's crypto/lrw.c implements it, which is what disks
 *          written by dm-crypt need: the key is cipher key || 16-byte tweak
 *          key K2 (lrw_setkey: tweak = key + keylen - 16); the 16-byte IV
 *          is the 128-bit big-endian index I of the first block, and the
 *          index increments by one per block; T = K2 (x) I in GF(2^128)
 *          with the kernel's "bbe" convention (include/crypto/gf128mul.h,
 *          gf128mul_64k_bbe: polynomial x^128+x^7+x^2+x+1, the block read
 *          as a big-endian integer whose bit k is the coefficient of x^k);
 *          consecutive tweaks differ by K2 (x) (I ^ (I+1)), the kernel's
 *          mulinc[] table (inc[] below).
 *   IVs    the Linux kernel's drivers/md/dm-crypt.c IV generators.
 */
#include "gcrypt_sector.h"

#include <gcrypt.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#ifdef PYQ_HAVE_NETTLE
#include <nettle/cbc.h>
#include <nettle/twofish.h>
#include <nettle/version.h>
#endif

#define PYQ_GC_MIN_GCRYPT "1.8.0"   /* first release with GCRY_CIPHER_MODE_XTS */
#define CTX_MAGIC 0x70716763u       /* "pqgc" */

enum { MODE_ECB = 1, MODE_CBC, MODE_XTS, MODE_LRW };

/* ------------------------------------------------------------------ */
/* small helpers                                                        */

static void wipe(void *p, size_t n)
{
    volatile unsigned char *v = (volatile unsigned char *)p;
    while (n--)
        *v++ = 0;
}

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_be64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[7 - i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static void put_le32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static int lc_equal(const char *a, const char *b)
{
    for (;; a++, b++) {
        char ca = *a, cb = *b;
        if (ca >= 'A' && ca <= 'Z')
            ca = (char)(ca - 'A' + 'a');
        if (cb >= 'A' && cb <= 'Z')
            cb = (char)(cb - 'A' + 'a');
        if (ca != cb)
            return 0;
        if (!ca)
            return 1;
    }
}

static unsigned ctz64(uint64_t v)  /* v != 0 */
{
#if defined(__GNUC__) || defined(__clang__)
    return (unsigned)__builtin_ctzll(v);
#else
    unsigned n = 0;
    while (!(v & 1)) {
        v >>= 1;
        n++;
    }
    return n;
#endif
}

/* ------------------------------------------------------------------ */
/* initialisation                                                       */

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int init_rc = PYQ_GC_EINIT;
static const char *init_version;

static void do_init(void)
{
    if (!gcry_control(GCRYCTL_INITIALIZATION_FINISHED_P)) {
        /* Nobody initialised libgcrypt: we do it.  gcry_check_version must
         * be the first call.  Secure memory is disabled: the volume key
         * already lives in ordinary Python memory, mlock limits would make
         * libgcrypt print warnings, and some builds drop process
         * capabilities when secure memory is set up.  Our own key copies
         * and tables are wiped explicitly; libgcrypt wipes its handles on
         * gcry_cipher_close. */
        init_version = gcry_check_version(PYQ_GC_MIN_GCRYPT);
        if (!init_version)
            return;
        gcry_control(GCRYCTL_DISABLE_SECMEM, 0);
        gcry_control(GCRYCTL_INITIALIZATION_FINISHED, 0);
    } else {
        /* The application owns initialisation; only check the version. */
        init_version = gcry_check_version(PYQ_GC_MIN_GCRYPT);
        if (!init_version)
            return;
    }
    init_rc = PYQ_GC_OK;
}

int pyq_gc_init(void)
{
    if (pthread_once(&init_once, do_init) != 0)
        return PYQ_GC_EINIT;
    return init_rc;
}

const char *pyq_gc_version(void)
{
    return init_rc == PYQ_GC_OK ? init_version : NULL;
}

int pyq_gc_nettle_version(void)
{
#ifdef PYQ_HAVE_NETTLE
    /* asked of the loaded library, not the headers it was built with */
    return nettle_version_major() * 1000 + nettle_version_minor();
#else
    return -1;
#endif
}

const char *pyq_gc_strerror(int err)
{
    switch (err) {
    case PYQ_GC_OK: return "success";
    case PYQ_GC_EINVAL: return "invalid argument";
    case PYQ_GC_ENOTSUP: return "cipher, mode, IV generator or hash not supported";
    case PYQ_GC_EKEYLEN: return "key length not valid for this cipher and mode";
    case PYQ_GC_ENOMEM: return "out of memory";
    case PYQ_GC_ECRYPTO: return "libgcrypt error";
    case PYQ_GC_EINIT: return "libgcrypt not available, too old, or not initialised";
    case PYQ_GC_ELEN: return "length is not a multiple of the sector or block size";
    default: return "unknown error";
    }
}

int pyq_gc_ivmode_from_name(const char *name)
{
    char buf[16];
    size_t n = 0;

    if (!name)
        return PYQ_GC_ENOTSUP;
    while (name[n] && name[n] != ':' && n < sizeof(buf) - 1) {
        buf[n] = name[n];
        n++;
    }
    buf[n] = 0;
    if (n == 0 || lc_equal(buf, "null"))
        return PYQ_GC_IV_NULL;
    if (lc_equal(buf, "plain"))
        return PYQ_GC_IV_PLAIN;
    if (lc_equal(buf, "plain64"))
        return PYQ_GC_IV_PLAIN64;
    if (lc_equal(buf, "plain64be"))
        return PYQ_GC_IV_PLAIN64BE;
    if (lc_equal(buf, "essiv"))
        return PYQ_GC_IV_ESSIV;
    if (lc_equal(buf, "benbi"))
        return PYQ_GC_IV_BENBI;
    return PYQ_GC_ENOTSUP;
}

/* ------------------------------------------------------------------ */
/* hashes                                                               */

/* Map kernel / cryptsetup / QEMU hash names to libgcrypt; outlen is the
 * number of digest bytes used (kernel wp256/wp384 are truncated Whirlpool). */
static int map_hash(const char *name, int *algo, unsigned *outlen, int *truncated)
{
    int a = 0;
    unsigned trunc = 0;
    char tmp[32];

    if (!name || !*name)
        return PYQ_GC_EINVAL;
    if (lc_equal(name, "wp256"))
        a = GCRY_MD_WHIRLPOOL, trunc = 32;
    else if (lc_equal(name, "wp384"))
        a = GCRY_MD_WHIRLPOOL, trunc = 48;
    else if (lc_equal(name, "wp512") || lc_equal(name, "whirlpool"))
        a = GCRY_MD_WHIRLPOOL;
    else if (lc_equal(name, "rmd160") || lc_equal(name, "ripemd160"))
        a = GCRY_MD_RMD160;
    else if (lc_equal(name, "streebog256"))
        a = GCRY_MD_STRIBOG256;
    else if (lc_equal(name, "streebog512"))
        a = GCRY_MD_STRIBOG512;
    else {
        a = gcry_md_map_name(name);
        if (!a) {
            /* kernel "blake2b-512" vs libgcrypt "BLAKE2B_512" */
            size_t i;
            for (i = 0; name[i] && i < sizeof(tmp) - 1; i++)
                tmp[i] = name[i] == '-' ? '_' : name[i];
            tmp[i] = 0;
            if (!name[i])
                a = gcry_md_map_name(tmp);
        }
    }
    if (!a || gcry_md_test_algo(a))
        return PYQ_GC_ENOTSUP;
    *algo = a;
    *outlen = trunc ? trunc : gcry_md_get_algo_dlen(a);
    if (truncated)
        *truncated = trunc != 0;
    return *outlen ? PYQ_GC_OK : PYQ_GC_ENOTSUP;
}

int pyq_gc_hash_len(const char *name)
{
    int algo, r;
    unsigned dlen;

    if ((r = pyq_gc_init()))
        return r;
    if ((r = map_hash(name, &algo, &dlen, NULL)))
        return r;
    return (int)dlen;
}

int pyq_gc_hash(const char *name, const void *data, size_t len,
                unsigned char *out, size_t outlen)
{
    int algo, r;
    unsigned dlen;
    unsigned char full[128];

    if ((r = pyq_gc_init()))
        return r;
    if ((!data && len) || !out)
        return PYQ_GC_EINVAL;
    if ((r = map_hash(name, &algo, &dlen, NULL)))
        return r;
    if (outlen < dlen || gcry_md_get_algo_dlen(algo) > sizeof(full))
        return PYQ_GC_EINVAL;
    gcry_md_hash_buffer(algo, full, data ? data : "", len);
    memcpy(out, full, dlen);
    wipe(full, sizeof(full));
    return (int)dlen;
}

int pyq_gc_pbkdf2(const char *hashname, const void *pass, size_t passlen,
                  const void *salt, size_t saltlen, unsigned long iterations,
                  unsigned char *out, size_t outlen)
{
    int algo, r, truncated;
    unsigned dlen;

    if ((r = pyq_gc_init()))
        return r;
    if ((!pass && passlen) || (!salt && saltlen) || !out || !outlen || !iterations)
        return PYQ_GC_EINVAL;
    if ((r = map_hash(hashname, &algo, &dlen, &truncated)))
        return r;
    if (truncated)
        return PYQ_GC_ENOTSUP;
    if (gcry_kdf_derive(pass, passlen, GCRY_KDF_PBKDF2, algo, salt, saltlen,
                        iterations, outlen, out))
        return PYQ_GC_ECRYPTO;
    return PYQ_GC_OK;
}

/* ------------------------------------------------------------------ */
/* GNU Nettle's Twofish (only used for 192-bit keys, which libgcrypt lacks) */

/* An opaque keyed Twofish, or PYQ_GC_ENOTSUP without Nettle. */
typedef struct nettle_tf nettle_tf;

#ifdef PYQ_HAVE_NETTLE
struct nettle_tf {
    struct twofish_ctx ctx;
};

/* nettle_cipher_func signatures, so that nettle's CBC calls them without
 * a cast between function types */
static void tf_enc_func(const void *c, size_t len, uint8_t *dst, const uint8_t *src)
{
    twofish_encrypt((const struct twofish_ctx *)c, len, dst, src);
}

static void tf_dec_func(const void *c, size_t len, uint8_t *dst, const uint8_t *src)
{
    twofish_decrypt((const struct twofish_ctx *)c, len, dst, src);
}

static int nettle_tf_new(nettle_tf **out, const unsigned char *key, size_t keylen)
{
    nettle_tf *t;

    *out = NULL;
    if (keylen != 16 && keylen != 24 && keylen != 32)
        return PYQ_GC_EKEYLEN;
    t = malloc(sizeof(*t));
    if (!t)
        return PYQ_GC_ENOMEM;
    twofish_set_key(&t->ctx, keylen, key);
    *out = t;
    return PYQ_GC_OK;
}

static void nettle_tf_free(nettle_tf *t)
{
    if (t) {
        wipe(t, sizeof(*t));
        free(t);
    }
}

/* ECB of len bytes (whole blocks) in place: Nettle takes dst == src */
static void nettle_tf_ecb(const nettle_tf *t, int enc, unsigned char *buf, size_t len)
{
    (enc ? tf_enc_func : tf_dec_func)(&t->ctx, len, buf, buf);
}

/* CBC of one data unit in place; iv (16 bytes) is overwritten */
static void nettle_tf_cbc(const nettle_tf *t, int enc, unsigned char *buf, size_t len,
                          unsigned char *iv)
{
    if (enc)
        cbc_encrypt(&t->ctx, tf_enc_func, 16, iv, len, buf, buf);
    else
        cbc_decrypt(&t->ctx, tf_dec_func, 16, iv, len, buf, buf);
}
#else
static int nettle_tf_new(nettle_tf **out, const unsigned char *key, size_t keylen)
{
    (void)key;
    (void)keylen;
    *out = NULL;
    return PYQ_GC_ENOTSUP;   /* built without GNU Nettle (nettle-dev) */
}

static void nettle_tf_free(nettle_tf *t)
{
    (void)t;
}

static void nettle_tf_ecb(const nettle_tf *t, int enc, unsigned char *buf, size_t len)
{
    /* never called: without Nettle no context is made */
    (void)t;
    (void)enc;
    (void)buf;
    (void)len;
}

static void nettle_tf_cbc(const nettle_tf *t, int enc, unsigned char *buf, size_t len,
                          unsigned char *iv)
{
    (void)t;
    (void)enc;
    (void)buf;
    (void)len;
    (void)iv;
}
#endif

/* ------------------------------------------------------------------ */
/* cipher families                                                      */

typedef struct {
    const char *name;
    size_t blk;
    int id16, id24, id32;     /* libgcrypt ids per key length; 0 = none */
    int nettle24;             /* 192-bit key served by GNU Nettle */
    int native_xts;           /* libgcrypt's XTS is the fast path (AES-NI/VAES) */
} family;

/* libgcrypt 1.10 runs ECB and XTS of serpent/twofish one block at a time,
 * but has multi-block (AVX2/SSE2) code for CBC and CFB *decryption*.  So
 * for those ciphers XTS and LRW are built here on "bulk" primitives:
 * E_K of arbitrary blocks through CFB-decrypt, D_K through CBC-decrypt. */
static const family families[] = {
    { "aes", 16, GCRY_CIPHER_AES128, GCRY_CIPHER_AES192, GCRY_CIPHER_AES256, 0, 1 },
    { "serpent", 16, GCRY_CIPHER_SERPENT128, GCRY_CIPHER_SERPENT192, GCRY_CIPHER_SERPENT256, 0, 0 },
    { "twofish", 16, GCRY_CIPHER_TWOFISH128, 0, GCRY_CIPHER_TWOFISH, 1, 0 },
    { "cast5", 8, GCRY_CIPHER_CAST5, 0, 0, 0, 0 },
};

static const family *find_family(const char *name)
{
    for (size_t i = 0; i < sizeof(families) / sizeof(families[0]); i++)
        if (lc_equal(name, families[i].name))
            return &families[i];
    return NULL;
}

/* libgcrypt algorithm id for a key length, 0 if GNU Nettle's cipher is to
 * be used, negative error otherwise (PYQ_GC_ENOTSUP for Nettle's when
 * pyqcrypt was built without it). */
static int family_algo(const family *f, size_t keylen)
{
    int id = keylen == 16 ? f->id16 : keylen == 24 ? f->id24 : keylen == 32 ? f->id32 : -1;
    if (id < 0)
        return PYQ_GC_EKEYLEN;
    if (id == 0) {
        if (keylen != 24 || !f->nettle24)
            return PYQ_GC_EKEYLEN;
#ifdef PYQ_HAVE_NETTLE
        return 0;
#else
        return PYQ_GC_ENOTSUP;
#endif
    }
    if (gcry_cipher_test_algo(id))
        return PYQ_GC_ENOTSUP;
    return id;
}

/* A block engine: libgcrypt handles or GNU Nettle's Twofish.  ecb does
 * single blocks; cfb/cbc (16-byte block ciphers only) do many blocks at
 * once; Nettle's Twofish does any number of blocks in one call. */
typedef struct {
    gcry_cipher_hd_t ecb;
    gcry_cipher_hd_t cfb;   /* E_K(x_1..x_n) through CFB decryption */
    gcry_cipher_hd_t cbc;   /* D_K(x_1..x_n) through CBC decryption */
    nettle_tf *tf;
} ecb_engine;

static void engine_free(ecb_engine *e)
{
    if (e->ecb)
        gcry_cipher_close(e->ecb);
    if (e->cfb)
        gcry_cipher_close(e->cfb);
    if (e->cbc)
        gcry_cipher_close(e->cbc);
    nettle_tf_free(e->tf);
    e->ecb = e->cfb = e->cbc = NULL;
    e->tf = NULL;
}

static int open_keyed(gcry_cipher_hd_t *h, int id, int mode, const unsigned char *key,
                      size_t keylen)
{
    if (gcry_cipher_open(h, id, mode, 0)) {
        *h = NULL;
        return PYQ_GC_ENOTSUP;
    }
    if (gcry_cipher_setkey(*h, key, keylen))
        return PYQ_GC_EKEYLEN;
    return PYQ_GC_OK;
}

/* ESSIV keys: serpent takes any multiple of 4 up to 32 bytes (kernel and
 * libgcrypt pad the same way then), the others their normal key sizes. */
static int engine_init(ecb_engine *e, const family *f, const unsigned char *key,
                       size_t keylen, int essiv, int bulk)
{
    int id, r;

    memset(e, 0, sizeof(*e));
    if (essiv && lc_equal(f->name, "serpent") && keylen <= 32 && keylen % 4 == 0 && keylen)
        id = f->id16;  /* libgcrypt serpent accepts any such length on any id */
    else
        id = family_algo(f, keylen);
    if (id < 0)
        return id;
    if (id == 0)
        return nettle_tf_new(&e->tf, key, keylen);
    if ((r = open_keyed(&e->ecb, id, GCRY_CIPHER_MODE_ECB, key, keylen)))
        goto fail;
    if (bulk && f->blk == 16) {
        if ((r = open_keyed(&e->cfb, id, GCRY_CIPHER_MODE_CFB, key, keylen)) ||
            (r = open_keyed(&e->cbc, id, GCRY_CIPHER_MODE_CBC, key, keylen)))
            goto fail;
    }
    return PYQ_GC_OK;
fail:
    engine_free(e);
    return r;
}

/* in-place ECB over len bytes (multiple of the block size), as
 * libgcrypt's or Nettle's ECB does it */
static int engine_ecb(const ecb_engine *e, int enc, unsigned char *buf, size_t len)
{
    if (e->ecb) {
        gcry_error_t err = enc ? gcry_cipher_encrypt(e->ecb, buf, len, NULL, 0)
                               : gcry_cipher_decrypt(e->ecb, buf, len, NULL, 0);
        return err ? PYQ_GC_ECRYPTO : PYQ_GC_OK;
    }
    if (!e->tf)
        return PYQ_GC_EINVAL;
    nettle_tf_ecb(e->tf, enc, buf, len);
    return PYQ_GC_OK;
}

static void xor16(unsigned char *d, const unsigned char *a, const unsigned char *b)
{
    uint64_t x[2], y[2];
    memcpy(x, a, 16);
    memcpy(y, b, 16);
    x[0] ^= y[0];
    x[1] ^= y[1];
    memcpy(d, x, 16);
}

/* In-place ECB of len bytes (16-byte blocks) using the multi-block paths:
 *   CFB decryption of C = (x_2..x_n, 0) with IV x_1 yields
 *     p_i = c_i ^ E(c_{i-1}) = x_{i+1} ^ E(x_i)   ->  E(x_i) = p_i ^ x_{i+1}
 *   CBC decryption of (x_1..x_n) with IV 0 yields
 *     p_i = D(x_i) ^ x_{i-1}                      ->  D(x_i) = p_i ^ x_{i-1}
 * tmp must hold len bytes. */
static int engine_bulk(const ecb_engine *e, int enc, unsigned char *buf, size_t len,
                       unsigned char *tmp)
{
    static const unsigned char zero[16];
    size_t n = len / 16;
    gcry_error_t err;

    if (!e->cfb || n < 2)
        return engine_ecb(e, enc, buf, len);
    if (enc) {
        memcpy(tmp, buf + 16, len - 16);
        memset(tmp + len - 16, 0, 16);
        err = gcry_cipher_setiv(e->cfb, buf, 16);
        if (!err)
            err = gcry_cipher_decrypt(e->cfb, tmp, len, NULL, 0);
        if (err)
            return PYQ_GC_ECRYPTO;
        for (size_t i = 0; i + 1 < n; i++)   /* buf[i+1] still holds x_{i+1} */
            xor16(buf + 16 * i, tmp + 16 * i, buf + 16 * (i + 1));
        memcpy(buf + 16 * (n - 1), tmp + 16 * (n - 1), 16);
    } else {
        memcpy(tmp, buf, len);
        err = gcry_cipher_setiv(e->cbc, zero, 16);
        if (!err)
            err = gcry_cipher_decrypt(e->cbc, tmp, len, NULL, 0);
        if (err)
            return PYQ_GC_ECRYPTO;
        for (size_t i = n - 1; i > 0; i--)   /* buf[i-1] still holds x_{i-1} */
            xor16(buf + 16 * i, tmp + 16 * i, buf + 16 * (i - 1));
        memcpy(buf, tmp, 16);
    }
    return PYQ_GC_OK;
}

/* ------------------------------------------------------------------ */
/* LRW: GF(2^128) in the kernel's "bbe" convention                      */
/* No library offers LRW (libgcrypt, Nettle and OpenSSL have none), so the
 * tweak arithmetic is here, after Liskov-Rivest-Wagner, IEEE P1619/D4's
 * LRW-AES and the Linux kernel's crypto/lrw.c (see the file header).
 * tab[][] is a 64 KiB table like the kernel's gf128mul_64k_bbe, inc[] its
 * mulinc[]. */

typedef struct { uint64_t hi, lo; } be128v;   /* big-endian 128-bit value */

typedef struct {
    be128v tab[16][256];   /* tab[s][v] = K2 (x) (v * x^(8s)) */
    be128v inc[128];       /* inc[n]   = K2 (x) (2^(n+1) - 1) */
} lrw_tables;

static be128v mul_x(be128v a)
{
    uint64_t carry = a.hi >> 63;
    a.hi = (a.hi << 1) | (a.lo >> 63);
    a.lo = (a.lo << 1) ^ (carry ? 0x87u : 0u);
    return a;
}

static void lrw_init(lrw_tables *t, const unsigned char *k2)
{
    be128v p[128];
    be128v acc = { 0, 0 };

    p[0].hi = get_be64(k2);
    p[0].lo = get_be64(k2 + 8);
    for (int k = 1; k < 128; k++)
        p[k] = mul_x(p[k - 1]);
    for (int s = 0; s < 16; s++) {
        t->tab[s][0].hi = t->tab[s][0].lo = 0;
        for (unsigned v = 1; v < 256; v++) {
            unsigned low = ctz64(v);
            be128v prev = t->tab[s][v & (v - 1)];
            t->tab[s][v].hi = prev.hi ^ p[8 * s + (int)low].hi;
            t->tab[s][v].lo = prev.lo ^ p[8 * s + (int)low].lo;
        }
    }
    for (int n = 0; n < 128; n++) {
        acc.hi ^= p[n].hi;
        acc.lo ^= p[n].lo;
        t->inc[n] = acc;
    }
    wipe(p, sizeof(p));
    wipe(&acc, sizeof(acc));
}

static be128v lrw_mul(const lrw_tables *t, be128v i)
{
    be128v r = { 0, 0 };
    for (int s = 0; s < 8; s++) {
        const be128v *e = &t->tab[s][(i.lo >> (8 * s)) & 0xFF];
        r.hi ^= e->hi;
        r.lo ^= e->lo;
    }
    for (int s = 0; s < 8; s++) {
        const be128v *e = &t->tab[8 + s][(i.hi >> (8 * s)) & 0xFF];
        r.hi ^= e->hi;
        r.lo ^= e->lo;
    }
    return r;
}

/* LRW tweaks of one data unit: nblocks blocks starting at index iv (16 BE
 * bytes) written to tbuf. */
static void lrw_tweaks(const lrw_tables *t, size_t nblocks, const unsigned char *iv,
                       unsigned char *tbuf)
{
    be128v idx = { get_be64(iv), get_be64(iv + 8) };
    be128v tw = lrw_mul(t, idx);

    for (size_t j = 0; j < nblocks; j++) {
        unsigned n;
        put_be64(tbuf + 16 * j, tw.hi);
        put_be64(tbuf + 16 * j + 8, tw.lo);
        /* T(I+1) = T(I) ^ K2 (x) (I ^ (I+1)); I ^ (I+1) = 2^(n+1)-1 with
         * n = number of trailing one bits of I */
        if (~idx.lo)
            n = ctz64(~idx.lo);
        else if (~idx.hi)
            n = 64 + ctz64(~idx.hi);
        else
            n = 128;
        idx.lo++;
        if (!idx.lo)
            idx.hi++;
        if (n < 128) {
            tw.hi ^= t->inc[n].hi;
            tw.lo ^= t->inc[n].lo;
        } else {
            tw = lrw_mul(t, idx);   /* index wrapped to 0 */
        }
    }
    wipe(&tw, sizeof(tw));
}

static void xts_mul_alpha(unsigned char *t)
{
    unsigned carry = t[15] >> 7;
    for (int i = 15; i > 0; i--)
        t[i] = (unsigned char)((t[i] << 1) | (t[i - 1] >> 7));
    t[0] = (unsigned char)((t[0] << 1) ^ (carry ? 0x87 : 0));
}

/* ------------------------------------------------------------------ */
/* context                                                              */

/* XTS (when not native) and LRW work on chunks of this many sectors: one
 * bulk call covers all their blocks.  A chunk holds at least two units of
 * the largest size, PYQ_GC_MAX_UNIT. */
#define CHUNK_SECTORS 16
#define CHUNK_BYTES (CHUNK_SECTORS * PYQ_GC_SECTOR_SIZE)
_Static_assert(CHUNK_BYTES >= 2 * PYQ_GC_MAX_UNIT, "a chunk holds two of the largest units");

struct pyq_gc_ctx {
    uint32_t magic;
    int mode;
    int ivmode;
    int own_xts;                /* xts built here (bulk engines or Nettle) */
    size_t blk;
    size_t ivsize;
    unsigned benbi_shift;
    gcry_cipher_hd_t hd;        /* native libgcrypt cbc, or xts for aes */
    ecb_engine main;            /* ecb, lrw, own xts data key, Nettle cbc,
                                   interleaved cbc encryption */
    ecb_engine tweak;           /* own xts tweak key */
    ecb_engine essiv;           /* ESSIV cipher */
    lrw_tables *lrw;
    /* scratch (a context is used by one thread at a time) */
    unsigned char tw[CHUNK_BYTES];
    unsigned char tmp[CHUNK_BYTES];
    unsigned char ivs[CHUNK_SECTORS * 16];
};

static int check_ctx(const pyq_gc_ctx *ctx)
{
    return ctx && ctx->magic == CTX_MAGIC;
}

void pyq_gc_ctx_free(pyq_gc_ctx *ctx)
{
    if (!check_ctx(ctx))
        return;
    if (ctx->hd)
        gcry_cipher_close(ctx->hd);
    engine_free(&ctx->main);
    engine_free(&ctx->tweak);
    engine_free(&ctx->essiv);
    if (ctx->lrw) {
        wipe(ctx->lrw, sizeof(*ctx->lrw));
        free(ctx->lrw);
    }
    wipe(ctx, sizeof(*ctx));
    free(ctx);
}

size_t pyq_gc_ctx_block_size(const pyq_gc_ctx *ctx)
{
    return check_ctx(ctx) ? ctx->blk : 0;
}

size_t pyq_gc_ctx_iv_size(const pyq_gc_ctx *ctx)
{
    return check_ctx(ctx) ? ctx->ivsize : 0;
}

int pyq_gc_ctx_builtin(const pyq_gc_ctx *ctx)
{
    return check_ctx(ctx) && (ctx->main.tf != NULL);
}

static int setup_essiv(pyq_gc_ctx *ctx, const family *f, const unsigned char *key,
                       size_t keylen, const char *ivhash)
{
    unsigned char digest[64];
    int dl, r;

    dl = pyq_gc_hash(ivhash, key, keylen, digest, sizeof(digest));
    if (dl < 0)
        return dl == PYQ_GC_EINVAL ? PYQ_GC_ENOTSUP : dl;
    r = engine_init(&ctx->essiv, f, digest, (size_t)dl, 1, 1);
    wipe(digest, sizeof(digest));
    return r;
}

int pyq_gc_ctx_new(pyq_gc_ctx **out, const char *cipher, const char *mode,
                   const unsigned char *key, size_t keylen,
                   int ivmode, const char *ivhash)
{
    const family *f;
    pyq_gc_ctx *ctx;
    size_t ckeylen;
    int r, id;

    if (!out)
        return PYQ_GC_EINVAL;
    *out = NULL;
    if ((r = pyq_gc_init()))
        return r;
    if (!cipher || !mode || !key || !keylen || keylen > 128)
        return PYQ_GC_EINVAL;
    if (ivmode < PYQ_GC_IV_NULL || ivmode > PYQ_GC_IV_BENBI)
        return PYQ_GC_ENOTSUP;
    if ((ivmode == PYQ_GC_IV_ESSIV) != (ivhash != NULL && *ivhash))
        return PYQ_GC_EINVAL;
    f = find_family(cipher);
    if (!f)
        return PYQ_GC_ENOTSUP;   /* e.g. cast6: not in libgcrypt */

    ctx = calloc(1, sizeof(*ctx));
    if (!ctx)
        return PYQ_GC_ENOMEM;
    ctx->magic = CTX_MAGIC;
    ctx->ivmode = ivmode;
    ctx->blk = f->blk;

    if (lc_equal(mode, "ecb"))
        ctx->mode = MODE_ECB;
    else if (lc_equal(mode, "cbc"))
        ctx->mode = MODE_CBC;
    else if (lc_equal(mode, "xts"))
        ctx->mode = MODE_XTS;
    else if (lc_equal(mode, "lrw"))
        ctx->mode = MODE_LRW;
    else {
        r = PYQ_GC_ENOTSUP;
        goto fail;
    }
    if ((ctx->mode == MODE_XTS || ctx->mode == MODE_LRW) && f->blk != 16) {
        r = PYQ_GC_ENOTSUP;   /* both need a 128-bit block cipher */
        goto fail;
    }
    if (ctx->mode == MODE_ECB) {
        if (ivmode != PYQ_GC_IV_NULL) {
            r = PYQ_GC_EINVAL;
            goto fail;
        }
        ctx->ivsize = 0;
    } else {
        ctx->ivsize = f->blk;
    }
    if (ivmode == PYQ_GC_IV_BENBI)
        ctx->benbi_shift = f->blk == 16 ? 5 : 6;   /* 9 - log2(block size) */

    switch (ctx->mode) {
    case MODE_XTS:
        if (keylen % 2) {
            r = PYQ_GC_EKEYLEN;
            goto fail;
        }
        ckeylen = keylen / 2;
        break;
    case MODE_LRW:
        if (keylen <= 16) {
            r = PYQ_GC_EKEYLEN;
            goto fail;
        }
        ckeylen = keylen - 16;
        break;
    default:
        ckeylen = keylen;
        break;
    }
    id = family_algo(f, ckeylen);
    if (id < 0) {
        r = id;
        goto fail;
    }

    if (ctx->mode == MODE_ECB || ctx->mode == MODE_LRW) {
        if ((r = engine_init(&ctx->main, f, key, ckeylen, 0, ctx->mode == MODE_LRW)))
            goto fail;
        if (ctx->mode == MODE_LRW) {
            ctx->lrw = malloc(sizeof(*ctx->lrw));
            if (!ctx->lrw) {
                r = PYQ_GC_ENOMEM;
                goto fail;
            }
            lrw_init(ctx->lrw, key + ckeylen);   /* tweak key = last 16 bytes */
        }
    } else if (ctx->mode == MODE_XTS && (id == 0 || !f->native_xts)) {
        /* key = data key || tweak key (IEEE 1619, kernel xts()) */
        ctx->own_xts = 1;
        if ((r = engine_init(&ctx->main, f, key, ckeylen, 0, 1)) ||
            (r = engine_init(&ctx->tweak, f, key + ckeylen, ckeylen, 0, 1)))
            goto fail;
    } else if (id == 0) {
        /* Nettle's cipher in CBC */
        if ((r = engine_init(&ctx->main, f, key, ckeylen, 0, 0)))
            goto fail;
    } else {
        int gmode = ctx->mode == MODE_XTS ? GCRY_CIPHER_MODE_XTS : GCRY_CIPHER_MODE_CBC;
        /* XTS: libgcrypt takes both halves in one setkey */
        if ((r = open_keyed(&ctx->hd, id, gmode, key, keylen)))
            goto fail;
        /* CBC encryption is serial within a sector; across sectors the
         * chains are independent and go through the bulk engine */
        if (ctx->mode == MODE_CBC && f->blk == 16 &&
            (r = engine_init(&ctx->main, f, key, ckeylen, 0, 1)))
            goto fail;
    }

    if (ivmode == PYQ_GC_IV_ESSIV && (r = setup_essiv(ctx, f, key, keylen, ivhash)))
        goto fail;

    *out = ctx;
    return PYQ_GC_OK;
fail:
    pyq_gc_ctx_free(ctx);
    return r;
}

/* dm-crypt IV generators for n consecutive data units, the first numbered
 * sector and each next one step further: n*ivsize bytes at ivs.  The
 * numbers count 512-byte sectors whatever the unit size, so benbi's
 * (sector << shift) + 1 is the index of the unit's first cipher block
 * (plus one) for every unit size.  ESSIV encrypts all of them in one bulk
 * call. */
static int make_ivs(pyq_gc_ctx *ctx, uint64_t sector, uint64_t step, size_t n,
                    unsigned char *ivs)
{
    size_t sz = ctx->ivsize;

    memset(ivs, 0, n * sz);
    for (size_t i = 0; i < n; i++, sector += step) {
        unsigned char *iv = ivs + i * sz;
        switch (ctx->ivmode) {
        case PYQ_GC_IV_NULL:
            break;
        case PYQ_GC_IV_PLAIN:
            put_le32(iv, (uint32_t)(sector & 0xFFFFFFFFu));
            break;
        case PYQ_GC_IV_PLAIN64:
        case PYQ_GC_IV_ESSIV:
            put_le64(iv, sector);
            break;
        case PYQ_GC_IV_PLAIN64BE:
            put_be64(iv + sz - 8, sector);
            break;
        case PYQ_GC_IV_BENBI:
            put_be64(iv + sz - 8, (sector << ctx->benbi_shift) + 1);
            break;
        default:
            return PYQ_GC_EINVAL;
        }
    }
    if (ctx->ivmode == PYQ_GC_IV_ESSIV)
        return engine_bulk(&ctx->essiv, 1, ivs, n * sz, ctx->tmp);
    return PYQ_GC_OK;
}

/* Tweak-masked modes (own xts, lrw): buf ^= T; E or D (bulk); buf ^= T.
 * nunits data units of unitlen bytes, IVs at ivs; tw/tmp hold
 * nunits*unitlen bytes. */
static int masked_units(pyq_gc_ctx *ctx, int enc, unsigned char *buf, size_t nunits,
                        size_t unitlen, unsigned char *ivs, unsigned char *tw,
                        unsigned char *tmp)
{
    size_t len = nunits * unitlen;
    int r;

    if (ctx->mode == MODE_LRW) {
        for (size_t u = 0; u < nunits; u++)
            lrw_tweaks(ctx->lrw, unitlen / 16, ivs + 16 * u, tw + u * unitlen);
    } else {
        /* T0 = E_K2(IV) for all units at once, then T_{j+1} = T_j * alpha */
        if ((r = engine_bulk(&ctx->tweak, 1, ivs, 16 * nunits, tmp)))
            return r;
        for (size_t u = 0; u < nunits; u++) {
            unsigned char *t = tw + u * unitlen;
            memcpy(t, ivs + 16 * u, 16);
            for (size_t off = 16; off < unitlen; off += 16) {
                memcpy(t + off, t + off - 16, 16);
                xts_mul_alpha(t + off);
            }
        }
    }
    for (size_t off = 0; off < len; off += 16)
        xor16(buf + off, buf + off, tw + off);
    r = engine_bulk(&ctx->main, enc, buf, len, tmp);
    for (size_t off = 0; off < len; off += 16)
        xor16(buf + off, buf + off, tw + off);
    return r;
}

/* native libgcrypt cbc/xts or Nettle's cbc, one data unit */
static int plain_unit(pyq_gc_ctx *ctx, int enc, unsigned char *buf, size_t len,
                      const unsigned char *iv)
{
    gcry_error_t err;

    if (!ctx->hd) {
        unsigned char chain[16];

        if (!ctx->main.tf)
            return PYQ_GC_EINVAL;
        memcpy(chain, iv, 16);
        nettle_tf_cbc(ctx->main.tf, enc, buf, len, chain);
        wipe(chain, sizeof(chain));
        return PYQ_GC_OK;
    }
    if (gcry_cipher_setiv(ctx->hd, iv, ctx->ivsize))
        return PYQ_GC_ECRYPTO;
    err = enc ? gcry_cipher_encrypt(ctx->hd, buf, len, NULL, 0)
              : gcry_cipher_decrypt(ctx->hd, buf, len, NULL, 0);
    return err ? PYQ_GC_ECRYPTO : PYQ_GC_OK;
}

/* CBC encryption of n >= 2 units of unit bytes with their chains
 * interleaved: block j of every unit in one bulk call.  ivs (n*16 bytes)
 * is consumed. */
static int cbc_enc_interleaved(pyq_gc_ctx *ctx, unsigned char *buf, size_t n,
                               size_t unit, unsigned char *ivs)
{
    unsigned char *x = ctx->tw;
    int r = PYQ_GC_OK;

    for (size_t off = 0; off < unit && !r; off += 16) {
        for (size_t s = 0; s < n; s++)
            xor16(x + 16 * s, buf + s * unit + off, ivs + 16 * s);
        r = engine_bulk(&ctx->main, 1, x, 16 * n, ctx->tmp);
        for (size_t s = 0; s < n; s++) {
            memcpy(buf + s * unit + off, x + 16 * s, 16);
            memcpy(ivs + 16 * s, x + 16 * s, 16);
        }
    }
    return r;
}

/* The loop behind pyq_gc_crypt and pyq_gc_crypt_units, arguments checked:
 * nunits > 0 units of unit bytes (a multiple of the block size, at most
 * PYQ_GC_MAX_UNIT), unit k numbered first + k * step (modulo 2^64). */
static int crypt_run(pyq_gc_ctx *ctx, int encrypt, unsigned char *buf, size_t nunits,
                     size_t unit, uint64_t first, uint64_t step)
{
    /* chunks of whole units that fit the scratch buffers: 16 of 512 bytes,
     * 2 of 4096 */
    size_t per_chunk = CHUNK_BYTES / unit, done = 0;
    int r = PYQ_GC_OK;

    if (ctx->mode == MODE_ECB)   /* no IV: the unit split does not matter */
        return engine_ecb(&ctx->main, encrypt, buf, nunits * unit);
    while (done < nunits && !r) {
        size_t n = nunits - done < per_chunk ? nunits - done : per_chunk;
        unsigned char *p = buf + done * unit;

        if ((r = make_ivs(ctx, first + (uint64_t)done * step, step, n, ctx->ivs)))
            break;
        if (ctx->mode == MODE_LRW || ctx->own_xts) {
            r = masked_units(ctx, encrypt, p, n, unit, ctx->ivs, ctx->tw, ctx->tmp);
        } else if (ctx->mode == MODE_CBC && encrypt && ctx->main.cfb && n >= 4) {
            r = cbc_enc_interleaved(ctx, p, n, unit, ctx->ivs);
        } else {
            for (size_t i = 0; i < n && !r; i++)
                r = plain_unit(ctx, encrypt, p + i * unit, unit, ctx->ivs + i * ctx->ivsize);
        }
        done += n;
    }
    wipe(ctx->tw, sizeof(ctx->tw));
    wipe(ctx->tmp, sizeof(ctx->tmp));
    wipe(ctx->ivs, sizeof(ctx->ivs));
    return r;
}

int pyq_gc_crypt(pyq_gc_ctx *ctx, int encrypt, unsigned char *buf,
                 size_t len, uint64_t first_sector)
{
    if (!check_ctx(ctx) || (encrypt != 0 && encrypt != 1))
        return PYQ_GC_EINVAL;
    if (len % PYQ_GC_SECTOR_SIZE)
        return PYQ_GC_ELEN;
    if (!len)
        return PYQ_GC_OK;
    if (!buf)
        return PYQ_GC_EINVAL;
    return crypt_run(ctx, encrypt, buf, len / PYQ_GC_SECTOR_SIZE, PYQ_GC_SECTOR_SIZE,
                     first_sector, 1);
}

int pyq_gc_crypt_units(pyq_gc_ctx *ctx, int encrypt, unsigned char *buf, size_t len,
                       size_t unit_size, uint64_t first_sector, uint64_t iv_step)
{
    size_t nunits;

    if (!check_ctx(ctx) || (encrypt != 0 && encrypt != 1) || iv_step == 0)
        return PYQ_GC_EINVAL;
    if (unit_size < PYQ_GC_SECTOR_SIZE || unit_size > PYQ_GC_MAX_UNIT)
        return PYQ_GC_EINVAL;
    if (unit_size % 16 || unit_size % ctx->blk || len % unit_size)
        return PYQ_GC_ELEN;
    if (!len)
        return PYQ_GC_OK;
    if (!buf)
        return PYQ_GC_EINVAL;
    nunits = len / unit_size;
    /* the last unit's number must not pass 2^64 - 1 (no wrapped IVs) */
    if ((uint64_t)(nunits - 1) > (UINT64_MAX - first_sector) / iv_step)
        return PYQ_GC_EINVAL;
    return crypt_run(ctx, encrypt, buf, nunits, unit_size, first_sector, iv_step);
}

int pyq_gc_crypt_iv(pyq_gc_ctx *ctx, int encrypt, unsigned char *buf,
                    size_t len, const unsigned char *iv, size_t ivlen)
{
    unsigned char *tw = NULL, *tmp = NULL, ivcopy[16];
    int r;

    if (!check_ctx(ctx) || (encrypt != 0 && encrypt != 1) || !buf || !len)
        return PYQ_GC_EINVAL;
    if (len % ctx->blk)
        return PYQ_GC_ELEN;
    if (ctx->mode == MODE_ECB)
        return engine_ecb(&ctx->main, encrypt, buf, len);
    if (!iv || ivlen != ctx->ivsize)
        return PYQ_GC_EINVAL;
    memcpy(ivcopy, iv, ivlen);
    if (ctx->mode == MODE_LRW || ctx->own_xts) {
        tw = malloc(len);
        tmp = malloc(len);
        if (!tw || !tmp) {
            free(tw);
            free(tmp);
            return PYQ_GC_ENOMEM;
        }
        r = masked_units(ctx, encrypt, buf, 1, len, ivcopy, tw, tmp);
        wipe(tw, len);
        wipe(tmp, len);
        free(tw);
        free(tmp);
    } else {
        r = plain_unit(ctx, encrypt, buf, len, ivcopy);
    }
    wipe(ivcopy, sizeof(ivcopy));
    return r;
}
