/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* cffi cdef (not compiled): what pyqcrypt calls in libcryptsetup (LUKS2
   headers it reads but does not parse itself). */

struct crypt_device;
#define CRYPT_ANY_SLOT ...
typedef enum {
    CRYPT_SLOT_INVALID, CRYPT_SLOT_INACTIVE, CRYPT_SLOT_ACTIVE,
    CRYPT_SLOT_ACTIVE_LAST, CRYPT_SLOT_UNBOUND
} crypt_keyslot_info;
int crypt_init(struct crypt_device **cd, const char *device);
int crypt_init_data_device(struct crypt_device **cd, const char *device,
                           const char *data_device);
void crypt_free(struct crypt_device *cd);
int crypt_load(struct crypt_device *cd, const char *requested_type,
               void *params);
const char *crypt_get_type(struct crypt_device *cd);
const char *crypt_get_cipher(struct crypt_device *cd);
const char *crypt_get_cipher_mode(struct crypt_device *cd);
const char *crypt_get_uuid(struct crypt_device *cd);
uint64_t crypt_get_data_offset(struct crypt_device *cd);
int crypt_get_volume_key_size(struct crypt_device *cd);
int crypt_get_sector_size(struct crypt_device *cd);
crypt_keyslot_info crypt_keyslot_status(struct crypt_device *cd, int keyslot);
int crypt_volume_key_get(struct crypt_device *cd, int keyslot,
                         char *volume_key, size_t *volume_key_size,
                         const char *passphrase, size_t passphrase_size);
int crypt_dump(struct crypt_device *cd);
