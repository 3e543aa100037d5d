/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Everything the pyqcrypt._gcrypt_native module's cdef names. */
#ifndef PYQ_GCRYPT_NATIVE_H
#define PYQ_GCRYPT_NATIVE_H

#include <gcrypt.h>

#include "gcrypt_sector.h"

#endif
