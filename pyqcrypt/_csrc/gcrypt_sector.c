/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * gcrypt_sector.c - sector cipher loop on libgcrypt for pyqcrypt.
 *
 * Modes:  cbc (libgcrypt CBC, one call per sector; encryption interleaves
 *         16 sectors' chains through the bulk engine), xts (libgcrypt XTS
 *         for aes; for serpent/twofish built here on bulk primitives), ecb
 *         (one call per buffer), lrw (kernel lrw() template: ECB of the
 *         block cipher plus a GF(2^128) tweak, implemented here).
 * IVs:    null, plain, plain64, plain64be, essiv:HASH, benbi (dm-crypt).
 * Ciphers: aes, serpent, twofish, cast5 from libgcrypt; twofish with a
 *         192-bit key from a built-in Twofish (libgcrypt lacks it).
 * Speed:  libgcrypt 1.10 has multi-block code for serpent/twofish only in
 *         CBC/CFB decryption and CTR, so "E_K of n arbitrary blocks" is done
 *         with CFB decryption and "D_K of n blocks" with CBC decryption
 *         (engine_bulk); key schedules are expanded once per context.
 *
 * Facts used (see NOTES.md for sources): the kernel lrw() splits the key as
 * cipher key || 16-byte tweak key K2, treats the 16-byte IV as the 128-bit
 * big-endian index I of the first block, and computes T = K2 (x) I in
 * GF(2^128) with the "bbe" convention (polynomial x^128+x^7+x^2+x+1, the
 * block read as a big-endian integer whose bit k is the coefficient of
 * x^k); C = E_K1(P ^ T) ^ T; the index increments by one per block.
 */
#include "gcrypt_sector.h"

#include <gcrypt.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

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

static uint32_t get_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
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

static uint32_t rol32(uint32_t x, unsigned n) { return (x << n) | (x >> (32 - n)); }
static uint32_t ror32(uint32_t x, unsigned n) { return (x >> n) | (x << (32 - n)); }

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
/* built-in Twofish (only used for 192-bit keys, which libgcrypt lacks)  */
/* Written from the algorithm description in Schneier et al., "Twofish:
 * A 128-Bit Block Cipher" (1998): q0/q1 from their 4-bit t-tables, MDS
 * over GF(2^8) mod x^8+x^6+x^5+x^3+1, RS over GF(2^8) mod x^8+x^6+x^3+x^2+1,
 * key-dependent S-boxes folded into four 256-entry tables. */

typedef struct {
    uint32_t k[40];
    uint32_t s[4][256];
} tf_key;

static unsigned char tf_q[2][256];
static uint32_t tf_mds[4][256];  /* tf_mds[j][y]: column j of MDS times y, as a LE word */
static pthread_once_t tf_once = PTHREAD_ONCE_INIT;
static int tf_ok;

static unsigned char gf_mul(unsigned a, unsigned b, unsigned poly)
{
    unsigned r = 0;
    while (b) {
        if (b & 1)
            r ^= a;
        a <<= 1;
        if (a & 0x100)
            a ^= poly;
        b >>= 1;
    }
    return (unsigned char)r;
}

static void tf_build(void)
{
    static const unsigned char t[2][4][16] = {
        { { 0x8, 0x1, 0x7, 0xD, 0x6, 0xF, 0x3, 0x2, 0x0, 0xB, 0x5, 0x9, 0xE, 0xC, 0xA, 0x4 },
          { 0xE, 0xC, 0xB, 0x8, 0x1, 0x2, 0x3, 0x5, 0xF, 0x4, 0xA, 0x6, 0x7, 0x0, 0x9, 0xD },
          { 0xB, 0xA, 0x5, 0xE, 0x6, 0xD, 0x9, 0x0, 0xC, 0x8, 0xF, 0x3, 0x2, 0x4, 0x7, 0x1 },
          { 0xD, 0x7, 0xF, 0x4, 0x1, 0x2, 0x6, 0xE, 0x9, 0xB, 0x3, 0x0, 0x8, 0x5, 0xC, 0xA } },
        { { 0x2, 0x8, 0xB, 0xD, 0xF, 0x7, 0x6, 0xE, 0x3, 0x1, 0x9, 0x4, 0x0, 0xA, 0xC, 0x5 },
          { 0x1, 0xE, 0x2, 0xB, 0x4, 0xC, 0x3, 0x7, 0x6, 0xD, 0xA, 0x5, 0xF, 0x9, 0x0, 0x8 },
          { 0x4, 0xC, 0x7, 0x5, 0x1, 0x6, 0x9, 0xA, 0x0, 0xE, 0xD, 0x8, 0x2, 0xB, 0x3, 0xF },
          { 0xB, 0x9, 0x5, 0x1, 0xC, 0x3, 0xD, 0xE, 0x6, 0x4, 0x7, 0xF, 0x2, 0x0, 0x8, 0xA } }
    };
    static const unsigned char mds[4][4] = {
        { 0x01, 0xEF, 0x5B, 0x5B },
        { 0x5B, 0xEF, 0xEF, 0x01 },
        { 0xEF, 0x5B, 0x01, 0xEF },
        { 0xEF, 0x01, 0xEF, 0x5B }
    };

    for (int q = 0; q < 2; q++) {
        for (unsigned x = 0; x < 256; x++) {
            unsigned a0 = x >> 4, b0 = x & 15;
            unsigned a1 = a0 ^ b0;
            unsigned b1 = (a0 ^ (((b0 >> 1) | (b0 << 3)) & 15) ^ (8 * a0)) & 15;
            unsigned a2 = t[q][0][a1], b2 = t[q][1][b1];
            unsigned a3 = a2 ^ b2;
            unsigned b3 = (a2 ^ (((b2 >> 1) | (b2 << 3)) & 15) ^ (8 * a2)) & 15;
            unsigned a4 = t[q][2][a3], b4 = t[q][3][b3];
            tf_q[q][x] = (unsigned char)((b4 << 4) | a4);
        }
    }
    for (int j = 0; j < 4; j++)
        for (unsigned y = 0; y < 256; y++)
            tf_mds[j][y] = (uint32_t)gf_mul(mds[0][j], y, 0x169) |
                           ((uint32_t)gf_mul(mds[1][j], y, 0x169) << 8) |
                           ((uint32_t)gf_mul(mds[2][j], y, 0x169) << 16) |
                           ((uint32_t)gf_mul(mds[3][j], y, 0x169) << 24);
    /* first entries of q0/q1 as printed in the Twofish paper */
    tf_ok = tf_q[0][0] == 0xA9 && tf_q[0][1] == 0x67 &&
            tf_q[1][0] == 0x75 && tf_q[1][1] == 0xF3;
}

/* byte j of word w */
#define TFB(w, j) ((unsigned)((w) >> (8 * (j))) & 0xFFu)

/* q-chain of byte position j with key words l[0..k-1] (the h() function
 * without MDS). */
static unsigned tf_chain(unsigned j, unsigned y, const uint32_t *l, unsigned k)
{
    const unsigned char *q0 = tf_q[0], *q1 = tf_q[1];
    if (k == 4) {
        static const int sel4[4] = { 1, 0, 0, 1 };
        y = (sel4[j] ? q1 : q0)[y] ^ TFB(l[3], j);
    }
    if (k >= 3) {
        static const int sel3[4] = { 1, 1, 0, 0 };
        y = (sel3[j] ? q1 : q0)[y] ^ TFB(l[2], j);
    }
    switch (j) {
    case 0: return q1[q0[q0[y] ^ TFB(l[1], 0)] ^ TFB(l[0], 0)];
    case 1: return q0[q0[q1[y] ^ TFB(l[1], 1)] ^ TFB(l[0], 1)];
    case 2: return q1[q1[q0[y] ^ TFB(l[1], 2)] ^ TFB(l[0], 2)];
    default: return q0[q1[q1[y] ^ TFB(l[1], 3)] ^ TFB(l[0], 3)];
    }
}

static uint32_t tf_h(uint32_t x, const uint32_t *l, unsigned k)
{
    uint32_t z = 0;
    for (unsigned j = 0; j < 4; j++)
        z ^= tf_mds[j][tf_chain(j, TFB(x, j), l, k)];
    return z;
}

static int tf_setkey(tf_key *tk, const unsigned char *key, size_t keylen)
{
    static const unsigned char rs[4][8] = {
        { 0x01, 0xA4, 0x55, 0x87, 0x5A, 0x58, 0xDB, 0x9E },
        { 0xA4, 0x56, 0x82, 0xF3, 0x1E, 0xC6, 0x68, 0xE5 },
        { 0x02, 0xA1, 0xFC, 0xC1, 0x47, 0xAE, 0x3D, 0x19 },
        { 0xA4, 0x55, 0x87, 0x5A, 0x58, 0xDB, 0x9E, 0x03 }
    };
    uint32_t me[4], mo[4], sv[4];
    unsigned k;

    if (pthread_once(&tf_once, tf_build) != 0 || !tf_ok)
        return PYQ_GC_ECRYPTO;
    if (keylen != 16 && keylen != 24 && keylen != 32)
        return PYQ_GC_EKEYLEN;
    k = (unsigned)(keylen / 8);
    for (unsigned i = 0; i < k; i++) {
        uint32_t s = 0;
        me[i] = get_le32(key + 8 * i);
        mo[i] = get_le32(key + 8 * i + 4);
        for (unsigned r = 0; r < 4; r++) {
            unsigned acc = 0;
            for (unsigned c = 0; c < 8; c++)
                acc ^= gf_mul(rs[r][c], key[8 * i + c], 0x14D);
            s |= (uint32_t)acc << (8 * r);
        }
        sv[k - 1 - i] = s;  /* S vector is used in reverse order */
    }
    for (uint32_t i = 0; i < 20; i++) {
        uint32_t a = tf_h(2 * i * 0x01010101u, me, k);
        uint32_t b = rol32(tf_h((2 * i + 1) * 0x01010101u, mo, k), 8);
        tk->k[2 * i] = a + b;
        tk->k[2 * i + 1] = rol32(a + 2 * b, 9);
    }
    for (unsigned j = 0; j < 4; j++)
        for (unsigned y = 0; y < 256; y++)
            tk->s[j][y] = tf_mds[j][tf_chain(j, y, sv, k)];
    wipe(me, sizeof(me));
    wipe(mo, sizeof(mo));
    wipe(sv, sizeof(sv));
    return PYQ_GC_OK;
}

static uint32_t tf_g(const tf_key *tk, uint32_t x)
{
    return tk->s[0][TFB(x, 0)] ^ tk->s[1][TFB(x, 1)] ^
           tk->s[2][TFB(x, 2)] ^ tk->s[3][TFB(x, 3)];
}

static void tf_encrypt_block(const tf_key *tk, unsigned char *b)
{
    uint32_t r0 = get_le32(b) ^ tk->k[0], r1 = get_le32(b + 4) ^ tk->k[1];
    uint32_t r2 = get_le32(b + 8) ^ tk->k[2], r3 = get_le32(b + 12) ^ tk->k[3];

    for (unsigned r = 0; r < 16; r++) {
        uint32_t t0 = tf_g(tk, r0), t1 = tf_g(tk, rol32(r1, 8));
        uint32_t f0 = t0 + t1 + tk->k[2 * r + 8];
        uint32_t f1 = t0 + 2 * t1 + tk->k[2 * r + 9];
        uint32_t n2 = ror32(r2 ^ f0, 1), n3 = rol32(r3, 1) ^ f1;
        r2 = r0;
        r3 = r1;
        r0 = n2;
        r1 = n3;
    }
    /* undo the last swap, output whitening */
    put_le32(b, r2 ^ tk->k[4]);
    put_le32(b + 4, r3 ^ tk->k[5]);
    put_le32(b + 8, r0 ^ tk->k[6]);
    put_le32(b + 12, r1 ^ tk->k[7]);
}

static void tf_decrypt_block(const tf_key *tk, unsigned char *b)
{
    uint32_t r2 = get_le32(b) ^ tk->k[4], r3 = get_le32(b + 4) ^ tk->k[5];
    uint32_t r0 = get_le32(b + 8) ^ tk->k[6], r1 = get_le32(b + 12) ^ tk->k[7];

    for (unsigned r = 16; r-- > 0;) {
        /* state is (r0,r1,r2,r3) = (new2, new3, old0, old1) */
        uint32_t o0 = r2, o1 = r3;
        uint32_t t0 = tf_g(tk, o0), t1 = tf_g(tk, rol32(o1, 8));
        uint32_t f0 = t0 + t1 + tk->k[2 * r + 8];
        uint32_t f1 = t0 + 2 * t1 + tk->k[2 * r + 9];
        uint32_t o2 = rol32(r0, 1) ^ f0, o3 = ror32(r1 ^ f1, 1);
        r0 = o0;
        r1 = o1;
        r2 = o2;
        r3 = o3;
    }
    put_le32(b, r0 ^ tk->k[0]);
    put_le32(b + 4, r1 ^ tk->k[1]);
    put_le32(b + 8, r2 ^ tk->k[2]);
    put_le32(b + 12, r3 ^ tk->k[3]);
}

/* ------------------------------------------------------------------ */
/* cipher families                                                      */

typedef struct {
    const char *name;
    size_t blk;
    int id16, id24, id32;     /* libgcrypt ids per key length; 0 = none */
    int builtin24;            /* 192-bit key served by the built-in code */
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

/* libgcrypt algorithm id for a key length, 0 if the built-in code is to
 * be used, negative error otherwise. */
static int family_algo(const family *f, size_t keylen)
{
    int id = keylen == 16 ? f->id16 : keylen == 24 ? f->id24 : keylen == 32 ? f->id32 : -1;
    if (id < 0)
        return PYQ_GC_EKEYLEN;
    if (id == 0)
        return (keylen == 24 && f->builtin24) ? 0 : PYQ_GC_EKEYLEN;
    if (gcry_cipher_test_algo(id))
        return PYQ_GC_ENOTSUP;
    return id;
}

/* A block engine: libgcrypt handles or built-in Twofish.  ecb does single
 * blocks; cfb/cbc (16-byte block ciphers only) do many blocks at once. */
typedef struct {
    gcry_cipher_hd_t ecb;
    gcry_cipher_hd_t cfb;   /* E_K(x_1..x_n) through CFB decryption */
    gcry_cipher_hd_t cbc;   /* D_K(x_1..x_n) through CBC decryption */
    tf_key *tf;
} ecb_engine;

static void engine_free(ecb_engine *e)
{
    if (e->ecb)
        gcry_cipher_close(e->ecb);
    if (e->cfb)
        gcry_cipher_close(e->cfb);
    if (e->cbc)
        gcry_cipher_close(e->cbc);
    if (e->tf) {
        wipe(e->tf, sizeof(*e->tf));
        free(e->tf);
    }
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
    if (id == 0) {
        e->tf = malloc(sizeof(*e->tf));
        if (!e->tf)
            return PYQ_GC_ENOMEM;
        if ((r = tf_setkey(e->tf, key, keylen)))
            goto fail;
        return PYQ_GC_OK;
    }
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

/* in-place ECB over len bytes (multiple of the block size), block by block
 * or as libgcrypt's ECB does it */
static int engine_ecb(const ecb_engine *e, int enc, unsigned char *buf, size_t len)
{
    if (e->ecb) {
        gcry_error_t err = enc ? gcry_cipher_encrypt(e->ecb, buf, len, NULL, 0)
                               : gcry_cipher_decrypt(e->ecb, buf, len, NULL, 0);
        return err ? PYQ_GC_ECRYPTO : PYQ_GC_OK;
    }
    for (size_t off = 0; off < len; off += 16) {
        if (enc)
            tf_encrypt_block(e->tf, buf + off);
        else
            tf_decrypt_block(e->tf, buf + off);
    }
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
    int own_xts;                /* xts built here (bulk engines or built-in) */
    size_t blk;
    size_t ivsize;
    unsigned benbi_shift;
    gcry_cipher_hd_t hd;        /* native libgcrypt cbc, or xts for aes */
    ecb_engine main;            /* ecb, lrw, own xts data key, built-in cbc,
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
        /* built-in cipher in CBC */
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

/* built-in cipher in CBC, one data unit */
static void builtin_cbc(const pyq_gc_ctx *ctx, int enc, unsigned char *buf, size_t len,
                        const unsigned char *iv)
{
    unsigned char prev[16], save[16];

    memcpy(prev, iv, 16);
    for (size_t off = 0; off < len; off += 16) {
        if (enc) {
            xor16(buf + off, buf + off, prev);
            tf_encrypt_block(ctx->main.tf, buf + off);
            memcpy(prev, buf + off, 16);
        } else {
            memcpy(save, buf + off, 16);
            tf_decrypt_block(ctx->main.tf, buf + off);
            xor16(buf + off, buf + off, prev);
            memcpy(prev, save, 16);
        }
    }
    wipe(prev, sizeof(prev));
    wipe(save, sizeof(save));
}

/* native libgcrypt cbc/xts or built-in cbc, one data unit */
static int plain_unit(pyq_gc_ctx *ctx, int enc, unsigned char *buf, size_t len,
                      const unsigned char *iv)
{
    gcry_error_t err;

    if (!ctx->hd) {
        builtin_cbc(ctx, enc, buf, len, iv);
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

/* ------------------------------------------------------------------ */
/* self test of the built-in Twofish                                    */

int pyq_gc_selftest_twofish(void)
{
    /* Twofish paper test vectors (plaintext all zero) */
    static const struct { size_t klen; const char *key, *ct; } kat[] = {
        { 16, "00000000000000000000000000000000", "9F589F5CF6122C32B6BFEC2F2AE8C35A" },
        { 24, "0123456789ABCDEFFEDCBA98765432100011223344556677",
          "CFD1D2E5A9BE9CDF501F13B892BD2248" },
        { 32, "0123456789ABCDEFFEDCBA987654321000112233445566778899AABBCCDDEEFF",
          "37527BE0052334B89F0CFCCAE87CFA20" },
    };
    unsigned char key[32], blk[16], exp[16], ref[16];
    tf_key *tk;
    int r = PYQ_GC_OK;

    if ((r = pyq_gc_init()))
        return r;
    tk = malloc(sizeof(*tk));
    if (!tk)
        return PYQ_GC_ENOMEM;
    for (size_t i = 0; i < sizeof(kat) / sizeof(kat[0]) && !r; i++) {
        for (size_t j = 0; j < kat[i].klen; j++) {
            unsigned v;
            sscanf(kat[i].key + 2 * j, "%2x", &v);
            key[j] = (unsigned char)v;
        }
        for (size_t j = 0; j < 16; j++) {
            unsigned v;
            sscanf(kat[i].ct + 2 * j, "%2x", &v);
            exp[j] = (unsigned char)v;
        }
        memset(blk, 0, 16);
        if ((r = tf_setkey(tk, key, kat[i].klen)))
            break;
        tf_encrypt_block(tk, blk);
        if (memcmp(blk, exp, 16))
            r = PYQ_GC_ECRYPTO;
        tf_decrypt_block(tk, blk);
        for (size_t j = 0; j < 16; j++)
            if (blk[j])
                r = PYQ_GC_ECRYPTO;
    }
    /* the same code must agree with libgcrypt for 128- and 256-bit keys */
    for (int round = 0; round < 200 && !r; round++) {
        size_t klen = (round & 1) ? 32 : 16;
        gcry_cipher_hd_t h;
        for (size_t j = 0; j < 32; j++)
            key[j] = (unsigned char)(j * 37 + (size_t)round * 101 + 7);
        for (size_t j = 0; j < 16; j++)
            blk[j] = ref[j] = (unsigned char)(j * 11 + (size_t)round * 13);
        if (gcry_cipher_open(&h, klen == 16 ? GCRY_CIPHER_TWOFISH128 : GCRY_CIPHER_TWOFISH,
                             GCRY_CIPHER_MODE_ECB, 0)) {
            r = PYQ_GC_ECRYPTO;
            break;
        }
        if (gcry_cipher_setkey(h, key, klen) || gcry_cipher_encrypt(h, ref, 16, NULL, 0))
            r = PYQ_GC_ECRYPTO;
        gcry_cipher_close(h);
        if (r || (r = tf_setkey(tk, key, klen)))
            break;
        tf_encrypt_block(tk, blk);
        if (memcmp(blk, ref, 16)) {
            r = PYQ_GC_ECRYPTO;
            break;
        }
        tf_decrypt_block(tk, blk);
        for (size_t j = 0; j < 16; j++)
            if (blk[j] != (unsigned char)(j * 11 + (size_t)round * 13))
                r = PYQ_GC_ECRYPTO;
    }
    wipe(tk, sizeof(*tk));
    free(tk);
    return r;
}
