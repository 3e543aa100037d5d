/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Everything the pyqcrypt._crypto_native module's cdef names: the
   libcrypto headers and pyqcrypt's own C routines built into it. */
#ifndef PYQ_CRYPTO_NATIVE_H
#define PYQ_CRYPTO_NATIVE_H

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "af.h"
#include "digest.h"
#include "libctx.h"
#include "secmem.h"
#include "sector_cipher.h"

#endif
