/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The Linux kernel keyring. */
#ifndef PYQ_KEYRING_H
#define PYQ_KEYRING_H

#include <stddef.h>
#include <stdint.h>

/* keyctl(KEYCTL_READ): copies at most len bytes of the key's payload into
   buf (NULL with len 0 only measures it) and returns the payload's full
   size, or a negative errno (-EINVAL for a NULL buf with len > 0). */
long pyq_keyctl_read(int32_t serial, unsigned char *buf, size_t len);

#endif
