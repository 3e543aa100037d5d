/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Everything the pyqcrypt._zstd_native module's cdef names. */
#ifndef PYQ_ZSTD_NATIVE_H
#define PYQ_ZSTD_NATIVE_H

#include <zstd.h>

#include "zstd_cluster.h"

#endif
