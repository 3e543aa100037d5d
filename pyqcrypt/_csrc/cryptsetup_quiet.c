/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* libcryptsetup logs to stderr by default; pyqcrypt reports errors itself,
   so it installs a log callback that drops every message. */

#include "cryptsetup_quiet.h"

#include <stddef.h>

static void pyq_cs_ignore(int level, const char *msg, void *usrptr)
{
    (void)level; (void)msg; (void)usrptr;
}

void pyq_cs_quiet(struct crypt_device *cd)
{
    crypt_set_log_callback(cd, pyq_cs_ignore, NULL);
}
