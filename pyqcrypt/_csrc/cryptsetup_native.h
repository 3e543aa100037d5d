/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Everything the pyqcrypt._cryptsetup_native module's cdef names. */
#ifndef PYQ_CRYPTSETUP_NATIVE_H
#define PYQ_CRYPTSETUP_NATIVE_H

#include <libcryptsetup.h>

#include "cryptsetup_quiet.h"
#include "cryptsetup_version.h"

#endif
