/* Volumes (ext4 on an extra virtio-blk disk) and host folders (virtiofs),
 * mounted where the host's "mounts" list says. The host validated every
 * target; this checks them again, and creates the mount points one
 * component at a time without following symlinks, so an image's symlink
 * cannot move a mount onto /proc or anywhere else. */
#define _GNU_SOURCE
#include "mounts.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

#define MAX_MOUNTS 16
#define MAX_TARGET 256
#define WAIT_DEVICE_MS 10000

static char g_mounted[MAX_MOUNTS][MAX_TARGET];
static int g_n_mounted;

bool mount_target_ok(const char *path)
{
    static const char *const reserved[] = { "/proc", "/sys", "/dev" };
    size_t len = strlen(path);
    if (path[0] != '/' || len < 2 || len >= MAX_TARGET)
        return false;
    for (const char *p = path; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return false;
    for (const char *c = path; *c;) {
        while (*c == '/')
            c++;
        const char *end = strchrnul(c, '/');
        size_t n = (size_t)(end - c);
        if ((n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.'))
            return false;
        c = end;
    }
    for (size_t i = 0; i < sizeof reserved / sizeof *reserved; i++) {
        size_t r = strlen(reserved[i]);
        if (strncmp(path, reserved[i], r) == 0 && (path[r] == 0 || path[r] == '/'))
            return false;
    }
    return true;
}

/* mkdir -p without following symlinks: every component must be a real
 * directory (or is created as one). */
static int make_mount_point(const char *path)
{
    int dir = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0)
        return -1;
    char comp[MAX_TARGET];
    for (const char *c = path; *c;) {
        while (*c == '/')
            c++;
        if (!*c)
            break;
        const char *end = strchrnul(c, '/');
        size_t n = (size_t)(end - c);
        memcpy(comp, c, n);
        comp[n] = 0;
        if (mkdirat(dir, comp, 0755) < 0 && errno != EEXIST) {
            close(dir);
            return -1;
        }
        int next = openat(dir, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        close(dir);
        if (next < 0)
            return -1; /* ELOOP/ENOTDIR: a symlink or a file in the way */
        dir = next;
        c = end;
    }
    close(dir);
    return 0;
}

static int mount_one(const struct jv *m)
{
    const char *type = NULL, *source = NULL, *target = NULL;
    bool ro = false;
    if (jfield_str(m, "type", &type) != 1 || jfield_str(m, "source", &source) != 1 ||
        jfield_str(m, "target", &target) != 1 || jfield_bool(m, "ro", &ro) < 0) {
        ma_log("mounts: an entry lacks type, source or target");
        return -1;
    }
    if (!mount_target_ok(target)) {
        ma_log("mounts: refusing mount point %s", target);
        return -1;
    }
    unsigned long flags = MS_NOSUID | MS_NODEV | (ro ? MS_RDONLY : 0);
    const char *data = NULL;
    if (strcmp(type, "ext4") == 0) {
        if (strncmp(source, "/dev/", 5) != 0 || strstr(source, "..")) {
            ma_log("mounts: refusing device %s", source);
            return -1;
        }
        if (!wait_for_path(source, now_mono_ms() + WAIT_DEVICE_MS)) {
            ma_log("mounts: device %s did not appear", source);
            return -1;
        }
        data = ro ? "noload" : NULL; /* read-only: no journal replay on a read-only disk */
    } else if (strcmp(type, "virtiofs") != 0) {
        ma_log("mounts: unknown type %s", type);
        return -1;
    }
    if (make_mount_point(target) < 0) {
        ma_log("mounts: mount point %s: %s", target, strerror(errno));
        return -1;
    }
    if (mount(source, target, type, flags, data) < 0) {
        ma_log("mounts: mount %s %s on %s: %s", type, source, target, strerror(errno));
        return -1;
    }
    if (g_n_mounted < MAX_MOUNTS)
        snprintf(g_mounted[g_n_mounted++], MAX_TARGET, "%s", target);
    return 0;
}

int mounts_apply(const struct jv *mounts)
{
    if (!mounts)
        return 0;
    if (mounts->type != J_ARR || mounts->len > MAX_MOUNTS) {
        ma_log("mounts: not a list of at most %d entries", MAX_MOUNTS);
        return -1;
    }
    int rc = 0;
    for (const struct jv *m = mounts->child; m; m = m->next)
        if (m->type != J_OBJ || mount_one(m) < 0)
            rc = -1;
    return rc;
}

void mounts_release(void)
{
    for (int i = g_n_mounted - 1; i >= 0; i--)
        if (umount(g_mounted[i]) < 0)
            mount(NULL, g_mounted[i], NULL, MS_REMOUNT | MS_RDONLY, NULL);
    g_n_mounted = 0;
}
