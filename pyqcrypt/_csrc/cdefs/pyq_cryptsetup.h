/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* cffi cdef (not compiled): pyqcrypt's own C routines in the
   libcryptsetup module. */

/* cryptsetup_quiet.h */
void pyq_cs_quiet(struct crypt_device *cd);

/* cryptsetup_version.h */
int pyq_cs_version_line(const char *probe, char *out, size_t outlen);
