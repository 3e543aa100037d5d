/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* cffi cdef (not compiled): what pyqcrypt calls in libgcrypt directly.
   Everything else goes through gcrypt_sector.c (pyq_gcrypt.h). */

const char *gcry_check_version(const char *req_version);
