/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* libcryptsetup's own statement of its version, caught from its debug log
   (see cryptsetup_version.h). */

#include "cryptsetup_version.h"

#include <libcryptsetup.h>
#include <stdio.h>
#include <string.h>

#define VERSION_MARK "initialized in cryptsetup library version "

struct version_catch {
    char *out;
    size_t outlen;
    int seen;
};

static void catch_version(int level, const char *msg, void *usrptr)
{
    struct version_catch *c = usrptr;

    if (level != CRYPT_LOG_DEBUG || c->seen || !msg || !strstr(msg, VERSION_MARK))
        return;
    snprintf(c->out, c->outlen, "%s", msg);
    c->seen = 1;
}

int pyq_cs_version_line(const char *probe, char *out, size_t outlen)
{
    struct version_catch c = { out, outlen, 0 };
    struct crypt_device *cd = NULL;

    if (!out || outlen == 0)
        return 0;
    out[0] = '\0';
    crypt_set_log_callback(NULL, catch_version, &c);
    crypt_set_debug_level(CRYPT_DEBUG_ALL);
    if (crypt_init(&cd, probe) == 0) {
        crypt_set_log_callback(cd, catch_version, &c);
        (void)crypt_load(cd, CRYPT_LUKS1, NULL);   /* fails: the probe is no header */
        crypt_free(cd);
    }
    crypt_set_debug_level(CRYPT_DEBUG_NONE);
    crypt_set_log_callback(NULL, NULL, NULL);
    return c.seen;
}
