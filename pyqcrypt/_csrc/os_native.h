/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Everything the pyqcrypt._os_native module's cdef names. */
#ifndef PYQ_OS_NATIVE_H
#define PYQ_OS_NATIVE_H

#include "keyring.h"
#include "ofd_lock.h"

#endif
