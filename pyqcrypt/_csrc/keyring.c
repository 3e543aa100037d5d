/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Reading a key's payload from the Linux kernel keyring (QEMU's
   secret_keyring objects), through the raw keyctl system call, so that no
   libkeyutils is needed. */

#include "keyring.h"

#include <errno.h>
#include <limits.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<linux/keyctl.h>)
#include <linux/keyctl.h>
#endif
#endif
#ifndef KEYCTL_READ
#define KEYCTL_READ 11          /* <linux/keyctl.h>, stable kernel ABI */
#endif

long pyq_keyctl_read(int32_t serial, unsigned char *buf, size_t len)
{
#ifdef SYS_keyctl
    long r;
    if ((buf == NULL && len != 0) || len > LONG_MAX)
        return -EINVAL;
    r = syscall(SYS_keyctl, (long)KEYCTL_READ, (long)serial, buf, (long)len, 0L);
    return r < 0 ? -errno : r;
#else
    (void)serial; (void)buf; (void)len;
    return -ENOSYS;
#endif
}
