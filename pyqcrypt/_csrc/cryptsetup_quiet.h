/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Silencing libcryptsetup's log. */
#ifndef PYQ_CRYPTSETUP_QUIET_H
#define PYQ_CRYPTSETUP_QUIET_H

#include <libcryptsetup.h>

/* Drop every message libcryptsetup would log for cd. */
void pyq_cs_quiet(struct crypt_device *cd);

#endif
