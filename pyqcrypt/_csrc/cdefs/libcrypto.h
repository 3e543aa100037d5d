/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* cffi cdef (not compiled): what pyqcrypt calls in OpenSSL's libcrypto.
   cffi checks every declaration against OpenSSL's own headers when it
   builds the module. */

typedef ... OSSL_LIB_CTX;
typedef ... EVP_CIPHER;
typedef ... EVP_MD;

/* error queue, version */
unsigned long ERR_get_error(void);
void ERR_error_string_n(unsigned long e, char *buf, size_t len);
void ERR_clear_error(void);
const char *OpenSSL_version(int type);

/* algorithm objects, fetched from pyqcrypt's own library context and
   cached for the life of the process (so never freed) */
EVP_CIPHER *EVP_CIPHER_fetch(OSSL_LIB_CTX *ctx, const char *algorithm,
                             const char *properties);
int EVP_CIPHER_get_key_length(const EVP_CIPHER *cipher);
int EVP_CIPHER_get_iv_length(const EVP_CIPHER *cipher);
EVP_MD *EVP_MD_fetch(OSSL_LIB_CTX *ctx, const char *algorithm,
                     const char *properties);
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

/* randomness, wiping, comparison */
int RAND_bytes_ex(OSSL_LIB_CTX *ctx, unsigned char *buf, size_t num,
                  unsigned int strength);
void OPENSSL_cleanse(void *ptr, size_t len);
int CRYPTO_memcmp(const void *a, const void *b, size_t len);
