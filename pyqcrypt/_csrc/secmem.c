/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Page-locked buffers for key material: page aligned and made of whole
   pages, so that munlock of one buffer can never unlock a neighbour;
   locked in RAM and kept out of core dumps where permitted; wiped with
   OPENSSL_cleanse before they are released. */

#include "secmem.h"

#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static size_t pyq_round_pages(size_t size)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t p = page > 0 ? (size_t)page : 4096;
    if (size == 0)
        size = 1;
    return (size + p - 1) / p * p;
}

unsigned char *pyq_secure_alloc(size_t size)
{
    void *p = NULL;
    size_t len = pyq_round_pages(size);
    long page = sysconf(_SC_PAGESIZE);
    if (posix_memalign(&p, page > 0 ? (size_t)page : 4096, len) != 0)
        return NULL;
    memset(p, 0, len);
    (void)mlock(p, len);
#ifdef MADV_DONTDUMP
    (void)madvise(p, len, MADV_DONTDUMP);
#endif
    return p;
}

void pyq_secure_free(unsigned char *ptr, size_t size)
{
    size_t len;
    if (ptr == NULL)
        return;
    len = pyq_round_pages(size);
    OPENSSL_cleanse(ptr, len);
    (void)munlock(ptr, len);
    free(ptr);
}
