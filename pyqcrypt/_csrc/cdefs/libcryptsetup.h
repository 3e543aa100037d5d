/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* cffi cdef (not compiled): what pyqcrypt calls in libcryptsetup: loading
   LUKS2 headers, opening and writing their keyslots, formatting new ones. */

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

/* keyslots, formats and checks (LUKS2 read, write and format) */
#define CRYPT_VOLUME_KEY_NO_SEGMENT ...
#define CRYPT_PBKDF_NO_BENCHMARK ...
#define CRYPT_REQUIREMENT_UNKNOWN ...
typedef enum { CRYPT_FLAGS_ACTIVATION, CRYPT_FLAGS_REQUIREMENTS } crypt_flags_type;
struct crypt_pbkdf_type {
    const char *type;
    const char *hash;
    uint32_t time_ms;
    uint32_t iterations;
    uint32_t max_memory_kb;
    uint32_t parallel_threads;
    uint32_t flags;
};
struct crypt_params_integrity {
    const char *integrity;
    ...;
};
struct crypt_params_luks2 {
    const struct crypt_pbkdf_type *pbkdf;
    const char *integrity;
    const struct crypt_params_integrity *integrity_params;
    size_t data_alignment;
    const char *data_device;
    uint32_t sector_size;
    const char *label;
    const char *subsystem;
};
int crypt_persistent_flags_get(struct crypt_device *cd, crypt_flags_type type,
                               uint32_t *flags);
int crypt_get_integrity_info(struct crypt_device *cd, struct crypt_params_integrity *ip);
int crypt_volume_key_verify(struct crypt_device *cd, const char *volume_key,
                            size_t volume_key_size);
int crypt_set_pbkdf_type(struct crypt_device *cd, const struct crypt_pbkdf_type *pbkdf);
int crypt_set_metadata_size(struct crypt_device *cd, uint64_t metadata_size,
                            uint64_t keyslots_size);
int crypt_set_data_offset(struct crypt_device *cd, uint64_t data_offset);
int crypt_format(struct crypt_device *cd, const char *type, const char *cipher,
                 const char *cipher_mode, const char *uuid, const char *volume_key,
                 size_t volume_key_size, void *params);
int crypt_keyslot_add_by_volume_key(struct crypt_device *cd, int keyslot,
                                    const char *volume_key, size_t volume_key_size,
                                    const char *passphrase, size_t passphrase_size);
int crypt_keyslot_destroy(struct crypt_device *cd, int keyslot);
int crypt_keyslot_max(const char *type);
int crypt_header_backup(struct crypt_device *cd, const char *requested_type,
                        const char *backup_file);
int crypt_header_restore(struct crypt_device *cd, const char *requested_type,
                         const char *backup_file);
int crypt_get_metadata_size(struct crypt_device *cd, uint64_t *metadata_size,
                            uint64_t *keyslots_size);
int crypt_keyslot_add_by_passphrase(struct crypt_device *cd, int keyslot,
                                    const char *passphrase, size_t passphrase_size,
                                    const char *new_passphrase, size_t new_passphrase_size);
int crypt_activate_by_passphrase(struct crypt_device *cd, const char *name, int keyslot,
                                 const char *passphrase, size_t passphrase_size,
                                 uint32_t flags);

/* luksUUID --uuid and dump --dump-json-metadata on LUKS2 headers */
int crypt_set_uuid(struct crypt_device *cd, const char *uuid);
int crypt_dump_json(struct crypt_device *cd, const char **json, uint32_t flags);
