/* Volumes and host folders: the config disk's "mounts" list, mounted after
 * the switch to the root disk (docs/volumes.md). */
#ifndef MA_MOUNTS_H
#define MA_MOUNTS_H

#include "json.h"

/* Mount every entry of the "mounts" array (NULL: nothing to do), creating
 * the mount points. Returns 0, or -1 when any entry failed (logged). */
int mounts_apply(const struct jv *mounts);

/* Unmount them again, last first (remount read-only when busy): the
 * volumes are clean when the guest powers off. */
void mounts_release(void);

/* Whether path is a guest path a mount may use: absolute, no "." or ".."
 * components, not "/" and not under /proc, /sys or /dev. */
bool mount_target_ok(const char *path);

#endif
