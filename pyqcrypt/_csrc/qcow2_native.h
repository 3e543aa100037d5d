/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Everything the pyqcrypt._qcow2_native module's cdef names. */
#ifndef PYQ_QCOW2_NATIVE_H
#define PYQ_QCOW2_NATIVE_H

#include "qcow2_l2.h"

#endif
