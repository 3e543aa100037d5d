/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Page-locked buffers for key material: page aligned and made of whole
   pages, so that munlock of one buffer can never unlock a neighbour;
   locked in RAM and kept out of core dumps where permitted; wiped with
   OPENSSL_cleanse before they are released. */

#include "secmem.h"

#include <openssl/crypto.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static size_t pyq_page_size(void)
{
    long page = sysconf(_SC_PAGESIZE);
    return page > 0 ? (size_t)page : 4096;
}

/* size bytes (0 counts as 1) rounded up to whole pages of page bytes, into
   *len.  0 when that does not fit in a size_t, 1 otherwise. */
static int pyq_round_pages(size_t size, size_t page, size_t *len)
{
    if (size == 0)
        size = 1;
    if (page == 0 || size > SIZE_MAX - (page - 1))
        return 0;
    *len = (size + page - 1) / page * page;
    return 1;
}

unsigned char *pyq_secure_alloc(size_t size)
{
    void *p = NULL;
    size_t page = pyq_page_size(), len;
    if (!pyq_round_pages(size, page, &len)
        || posix_memalign(&p, page, len) != 0)
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
    /* A size pyq_secure_alloc refused never came with a pointer: such a
       call is a caller's bug, and leaking beats wiping a guessed length. */
    if (ptr == NULL || !pyq_round_pages(size, pyq_page_size(), &len))
        return;
    OPENSSL_cleanse(ptr, len);
    (void)munlock(ptr, len);
    free(ptr);
}
