/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Asking the loaded libcryptsetup which release it is. */
#ifndef PYQ_CRYPTSETUP_VERSION_H
#define PYQ_CRYPTSETUP_VERSION_H

#include <stddef.h>

/*
 * libcryptsetup 2.6 has no version call, but the first time it sets up its
 * crypto backend in a process it logs, at debug level, "Crypto backend
 * (...) initialized in cryptsetup library version X.Y.Z."  This turns
 * debug logging on, loads *probe* (an existing file that is not a LUKS
 * header: nothing is written) as LUKS1 to trigger that set-up, and copies
 * that line into out (NUL-terminated, cut to outlen - 1 bytes).  Debug
 * logging and the default log callback are reset before returning, so it
 * must not run while another thread uses libcryptsetup.
 *
 * Returns 1 when the line was seen, 0 when not (the backend was already
 * set up earlier in this process, or the probe could not be opened).
 */
int pyq_cs_version_line(const char *probe, char *out, size_t outlen);

#endif
