/* put and get sessions: files in, files out. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "frame.h"
#include "session.h"

struct put_session {
    struct session s;
    int file_fd;         /* the temporary file */
    int dir_fd;          /* the destination's directory, reached without foreign symlinks */
    char *path, *tmp_path; /* tmp_path: a name in dir_fd */
    uint32_t mode;
    int64_t uid, gid;
    uint64_t bytes;
};

static struct put_session *put_of(struct session *s) { return (struct put_session *)s; }

static const char *errno_code(int err)
{
    switch (err) {
    case ENOENT:
    case ENOTDIR:
        return "not_found";
    case EACCES:
    case EPERM:
    case EROFS:
        return "permission_denied";
    case EISDIR:
        return "is_directory";
    default:
        return "io_error";
    }
}

static void fail_errno(struct session *s, const char *what, int err)
{
    char msg[PATH_MAX + 128];
    snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
    session_fail(s, errno_code(err), msg);
}

/* Symlinks a put may follow on its way to the destination's directory:
 * those owned by root (merged /usr's /bin, /var/run) or by guest init's own
 * user. A link owned by anyone else could have been planted by an
 * unprivileged guest process to steer a root write elsewhere. */
static bool trusted_link(const struct stat *st)
{
    return st->st_uid == 0 || st->st_uid == geteuid();
}

#define MAX_LINKS 40

/* Opens absolute directory path `dir` as an O_PATH fd, one component at a
 * time, never following a symlink that is not trusted_link(); with mkdirs,
 * missing components are created (0755). Returns -1 with errno set, and
 * *refused = true when an untrusted symlink was in the way. */
static int open_dir_walk(const char *dir, bool mkdirs, bool *refused)
{
    const int dflags = O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
    char rest[PATH_MAX];
    int links = 0;
    *refused = false;
    if (snprintf(rest, sizeof rest, "%s", dir) >= (int)sizeof rest) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int fd = open("/", dflags);
    if (fd < 0)
        return -1;
    char *p = rest;
    for (;;) {
        while (*p == '/')
            p++;
        if (!*p)
            return fd;
        size_t len = strcspn(p, "/");
        char name[NAME_MAX + 1];
        if (len > NAME_MAX) {
            errno = ENAMETOOLONG;
            break;
        }
        memcpy(name, p, len);
        name[len] = 0;
        p += len;
        if (strcmp(name, ".") == 0)
            continue;
        int next = openat(fd, name, dflags);
        if (next < 0 && errno == ENOENT && mkdirs) {
            if (mkdirat(fd, name, 0755) < 0 && errno != EEXIST)
                break;
            next = openat(fd, name, dflags);
        }
        if (next >= 0) {
            close(fd);
            fd = next;
            continue;
        }
        if (errno != ENOTDIR && errno != ELOOP)
            break;
        /* Not a directory: a symlink we may follow, or a real error. The
         * link is opened itself, so its owner and target are one object. */
        int lfd = openat(fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
        struct stat st;
        if (lfd < 0)
            break;
        if (fstat(lfd, &st) < 0 || !S_ISLNK(st.st_mode)) {
            close(lfd);
            errno = ENOTDIR;
            break;
        }
        if (!trusted_link(&st)) {
            close(lfd);
            *refused = true;
            errno = ELOOP;
            break;
        }
        char target[PATH_MAX];
        ssize_t n = readlinkat(lfd, "", target, sizeof target - 1);
        close(lfd);
        if (n < 0)
            break;
        target[n] = 0;
        if (++links > MAX_LINKS) {
            errno = ELOOP;
            break;
        }
        char joined[PATH_MAX];
        if (snprintf(joined, sizeof joined, "%s/%s", target, p) >= (int)sizeof joined) {
            errno = ENAMETOOLONG;
            break;
        }
        memcpy(rest, joined, strlen(joined) + 1);
        p = rest;
        if (target[0] == '/') {
            close(fd);
            if ((fd = open("/", dflags)) < 0)
                return -1;
        }
    }
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
}

/* A fresh temporary file beside `base` in dir_fd; its name goes to name. */
static int create_temp(int dir_fd, const char *base, char *name, size_t size)
{
    static uint32_t counter;
    for (int attempt = 0; attempt < 100; attempt++) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint32_t r = (uint32_t)ts.tv_nsec ^ ((uint32_t)getpid() << 16) ^ (++counter * 2654435761u);
        snprintf(name, size, ".%.200s.microagent-%08x", base, r);
        int fd = openat(dir_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd >= 0 || errno != EEXIST)
            return fd;
    }
    errno = EEXIST;
    return -1;
}

static void put_open(struct session *s, const struct jv *req)
{
    struct put_session *ps = put_of(s);
    ps->file_fd = -1;
    ps->dir_fd = -1;
    const char *path = NULL;
    int64_t mode = 0644, uid = -1, gid = -1;
    bool mkdirs = false;
    if (jfield_str(req, "path", &path) != 1 || !*path) {
        session_fail(s, "bad_request", "path is required and must be a string");
        return;
    }
    if (jfield_int(req, "mode", 0, 07777, &mode) < 0 ||
        jfield_int(req, "uid", -1, 0xFFFFFFFEll, &uid) < 0 ||
        jfield_int(req, "gid", -1, 0xFFFFFFFEll, &gid) < 0 ||
        jfield_bool(req, "mkdirs", &mkdirs) < 0) {
        session_fail(s, "bad_request", "mode/uid/gid must be integers, mkdirs a boolean");
        return;
    }
    if (path[0] != '/') {
        session_fail(s, "not_absolute", "path must be absolute");
        return;
    }
    size_t plen = strlen(path);
    if (plen >= PATH_MAX - 64) {
        session_fail(s, "io_error", "path too long");
        return;
    }
    const char *slash = strrchr(path, '/');
    const char *base = slash + 1;
    if (!*base || strcmp(base, ".") == 0 || strcmp(base, "..") == 0) {
        session_fail(s, "is_directory", "path is a directory");
        return;
    }
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%.*s", (int)(slash == path ? 1 : slash - path), path);
    bool refused;
    int dir_fd = open_dir_walk(dir, mkdirs, &refused);
    if (dir_fd < 0) {
        if (refused) {
            char msg[PATH_MAX + 128];
            snprintf(msg, sizeof msg, "%s: a symlink on the way is not owned by root", dir);
            session_fail(s, "symlink_refused", msg);
        } else {
            fail_errno(s, dir, errno);
        }
        return;
    }
    ps->dir_fd = dir_fd;
    struct stat st;
    /* Following a last-component link here only stats it; the file itself
     * replaces the link on rename. */
    if (fstatat(dir_fd, base, &st, 0) == 0 && S_ISDIR(st.st_mode)) {
        session_fail(s, "is_directory", "path is a directory");
        return;
    }
    char tmp[NAME_MAX + 1];
    int fd = create_temp(dir_fd, base, tmp, sizeof tmp);
    if (fd < 0) {
        /* The directory is there (it was just opened): ENOENT here means it takes no
         * new files (/proc, /sys), not that something is missing. */
        int err = errno;
        if (err == ENOENT || err == EACCES || err == EPERM || err == EROFS) {
            char msg[PATH_MAX + 128];
            snprintf(msg, sizeof msg, "%s exists but does not take new files (%s)", dir, strerror(err));
            session_fail(s, "permission_denied", msg);
        } else {
            fail_errno(s, dir, err);
        }
        return;
    }
    ps->file_fd = fd;
    ps->path = strdup(path);
    ps->tmp_path = strdup(tmp);
    ps->mode = (uint32_t)mode;
    ps->uid = uid;
    ps->gid = gid;
    if (!ps->path || !ps->tmp_path) {
        if (!ps->tmp_path)
            unlinkat(dir_fd, tmp, 0);
        session_fail(s, "io_error", "out of memory");
        return;
    }
}

static void put_on_data(struct session *s, const uint8_t *p, size_t n)
{
    struct put_session *ps = put_of(s);
    if (n > 0) {
        size_t done = 0;
        while (done < n) {
            ssize_t w = write(ps->file_fd, p + done, n - done);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                fail_errno(s, ps->path, w < 0 ? errno : EIO);
                return;
            }
            done += (size_t)w;
        }
        ps->bytes += n;
        session_consumed(s, n);
        return;
    }
    /* EOF: ownership, mode, rename into place. */
    if ((ps->uid >= 0 || ps->gid >= 0) &&
        fchown(ps->file_fd, ps->uid >= 0 ? (uid_t)ps->uid : (uid_t)-1,
               ps->gid >= 0 ? (gid_t)ps->gid : (gid_t)-1) < 0) {
        fail_errno(s, ps->path, errno);
        return;
    }
    if (fchmod(ps->file_fd, (mode_t)ps->mode) < 0) {
        fail_errno(s, ps->path, errno);
        return;
    }
    int fd = ps->file_fd;
    ps->file_fd = -1;
    if (close(fd) < 0) {
        fail_errno(s, ps->path, errno);
        return;
    }
    if (renameat(ps->dir_fd, ps->tmp_path, ps->dir_fd, strrchr(ps->path, '/') + 1) < 0) {
        fail_errno(s, ps->path, errno);
        return;
    }
    free(ps->tmp_path);
    ps->tmp_path = NULL;
    struct buf b = { 0 };
    sb_printf(&b, "{\"status\":\"ok\",\"bytes\":%llu}", (unsigned long long)ps->bytes);
    session_exit(s, &b);
}

/* Close and remove the temporary file unless it was renamed into place. */
static void put_destroy(struct session *s)
{
    struct put_session *ps = put_of(s);
    if (ps->file_fd >= 0) {
        close(ps->file_fd);
        ps->file_fd = -1;
    }
    if (ps->tmp_path) {
        if (ps->dir_fd >= 0)
            unlinkat(ps->dir_fd, ps->tmp_path, 0);
        free(ps->tmp_path);
        ps->tmp_path = NULL;
    }
    if (ps->dir_fd >= 0) {
        close(ps->dir_fd);
        ps->dir_fd = -1;
    }
    free(ps->path);
    ps->path = NULL;
}

static void get_open(struct session *s, const struct jv *req)
{
    const char *path = NULL;
    if (jfield_str(req, "path", &path) != 1 || !*path) {
        session_fail(s, "bad_request", "path is required and must be a string");
        return;
    }
    if (path[0] != '/') {
        session_fail(s, "not_absolute", "path must be absolute");
        return;
    }
    struct stat st;
    if (stat(path, &st) < 0) {
        fail_errno(s, path, errno);
        return;
    }
    if (S_ISDIR(st.st_mode)) {
        session_fail(s, "is_directory", "path is a directory");
        return;
    }
    if (!S_ISREG(st.st_mode)) {
        session_fail(s, "not_regular_file", "path is not a regular file");
        return;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        fail_errno(s, path, errno);
        return;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        session_fail(s, "not_regular_file", "path is not a regular file");
        return;
    }
    s->out_fd[1] = fd;
    s->out_used[1] = true;
    s->in_discard = true;
    struct buf b = { 0 };
    sb_printf(&b, "{\"stat\":{\"size\":%lld,\"mode\":%u,\"uid\":%u,\"gid\":%u}}",
              (long long)st.st_size, (unsigned)(st.st_mode & 07777), (unsigned)st.st_uid,
              (unsigned)st.st_gid);
    session_send_json(s, F_CONTROL, &b);
    buf_free(&b);
}

static bool get_maybe_finish(struct session *s)
{
    if (!s->out_eof_sent[1])
        return false;
    if (s->out_error) {
        session_fail(s, "io_error", "reading the file failed");
        return true;
    }
    struct buf b = { 0 };
    sb_printf(&b, "{\"status\":\"ok\",\"bytes\":%llu}", (unsigned long long)s->sent[1]);
    session_exit(s, &b);
    return true;
}

const struct session_ops put_session_ops = {
    .size = sizeof(struct put_session),
    .open = put_open,
    .on_data = put_on_data,
    .destroy = put_destroy,
};

/* get reads no input: stream 0 is discarded (in_discard). */
const struct session_ops get_session_ops = {
    .size = sizeof(struct session),
    .open = get_open,
    .maybe_finish = get_maybe_finish,
};
