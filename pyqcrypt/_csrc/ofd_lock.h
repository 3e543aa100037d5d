/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Open file description byte locks, as QEMU's file-posix driver takes them. */
#ifndef PYQ_OFD_LOCK_H
#define PYQ_OFD_LOCK_H

#include <stdint.h>

/* Take (shared != 0) or drop a shared OFD lock on [start, start+len).
   0, or a negative errno. */
int pyq_ofd_lock(int fd, int64_t start, int64_t len, int shared);

/* 1 when another open file description holds a lock in the range, 0 when
   none does, or a negative errno. */
int pyq_ofd_test(int fd, int64_t start, int64_t len);

#endif
