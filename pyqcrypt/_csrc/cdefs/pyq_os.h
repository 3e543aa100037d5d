/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* cffi cdef (not compiled): pyqcrypt's own C routines over Linux system
   calls, in the _os_native module (no library behind them). */

/* ofd_lock.h */
int pyq_ofd_lock(int fd, int64_t start, int64_t len, int shared);
int pyq_ofd_test(int fd, int64_t start, int64_t len);

/* keyring.h */
long pyq_keyctl_read(int32_t serial, unsigned char *buf, size_t len);
