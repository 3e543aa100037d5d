/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* QEMU-compatible image locks: shared open file description (OFD) byte
   locks, which belong to the open file rather than to the process, so
   that two opens of one image in one process see each other. */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE     /* F_OFD_SETLK, F_OFD_GETLK */
#endif

#include "ofd_lock.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

int pyq_ofd_lock(int fd, int64_t start, int64_t len, int shared)
{
    struct flock fl;
    memset(&fl, 0, sizeof(fl));
    fl.l_type = shared ? F_RDLCK : F_UNLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = start;
    fl.l_len = len;
    return fcntl(fd, F_OFD_SETLK, &fl) == -1 ? -errno : 0;
}

int pyq_ofd_test(int fd, int64_t start, int64_t len)
{
    struct flock fl;
    memset(&fl, 0, sizeof(fl));
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = start;
    fl.l_len = len;
    if (fcntl(fd, F_OFD_GETLK, &fl) == -1)
        return -errno;
    return fl.l_type != F_UNLCK;
}
