/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Page-locked buffers for key material. */
#ifndef PYQ_SECMEM_H
#define PYQ_SECMEM_H

#include <stddef.h>

/* A zeroed buffer of at least size bytes (whole pages), or NULL when
   memory is short or size rounded up to pages overflows. */
unsigned char *pyq_secure_alloc(size_t size);

/* Wipe and release a buffer from pyq_secure_alloc(size); NULL is a no-op. */
void pyq_secure_free(unsigned char *ptr, size_t size);

#endif
