/* put and get sessions: files in, files out. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"
#include "session.h"

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

static int mkdir_p(const char *dir)
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s", dir) >= (int)sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = tmp + 1;; p++) {
        if (*p == '/' || *p == 0) {
            char c = *p;
            *p = 0;
            if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
                return -1;
            *p = c;
            if (!c)
                break;
        }
    }
    struct stat st;
    if (stat(dir, &st) < 0)
        return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

void put_open(struct session *s, const struct jv *req)
{
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
    struct stat st;
    if (path[plen - 1] == '/' || (stat(path, &st) == 0 && S_ISDIR(st.st_mode))) {
        session_fail(s, "is_directory", "path is a directory");
        return;
    }
    const char *slash = strrchr(path, '/');
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%.*s", (int)(slash == path ? 1 : slash - path), path);
    const char *base = slash + 1;
    if (mkdirs && mkdir_p(dir) < 0) {
        fail_errno(s, dir, errno);
        return;
    }
    char tmp[PATH_MAX + 256];
    snprintf(tmp, sizeof tmp, "%s/.%.200s.microagent-XXXXXX", strcmp(dir, "/") == 0 ? "" : dir, base);
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        fail_errno(s, dir, errno);
        return;
    }
    s->file_fd = fd;
    s->path = strdup(path);
    s->tmp_path = strdup(tmp);
    s->mode = (uint32_t)mode;
    s->uid = uid;
    s->gid = gid;
    if (!s->path || !s->tmp_path) {
        session_fail(s, "io_error", "out of memory");
        return;
    }
}

void put_on_data(struct session *s, const uint8_t *p, size_t n)
{
    if (n > 0) {
        size_t done = 0;
        while (done < n) {
            ssize_t w = write(s->file_fd, p + done, n - done);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                fail_errno(s, s->path, w < 0 ? errno : EIO);
                return;
            }
            done += (size_t)w;
        }
        s->bytes += n;
        session_consumed(s, n);
        return;
    }
    /* EOF: ownership, mode, rename into place. */
    if ((s->uid >= 0 || s->gid >= 0) &&
        fchown(s->file_fd, s->uid >= 0 ? (uid_t)s->uid : (uid_t)-1,
               s->gid >= 0 ? (gid_t)s->gid : (gid_t)-1) < 0) {
        fail_errno(s, s->path, errno);
        return;
    }
    if (fchmod(s->file_fd, (mode_t)s->mode) < 0) {
        fail_errno(s, s->path, errno);
        return;
    }
    int fd = s->file_fd;
    s->file_fd = -1;
    if (close(fd) < 0) {
        fail_errno(s, s->path, errno);
        return;
    }
    if (rename(s->tmp_path, s->path) < 0) {
        fail_errno(s, s->path, errno);
        return;
    }
    free(s->tmp_path);
    s->tmp_path = NULL;
    struct buf b = { 0 };
    sb_printf(&b, "{\"status\":\"ok\",\"bytes\":%llu}", (unsigned long long)s->bytes);
    session_send_json(s, F_EXIT, &b);
    buf_free(&b);
    session_destroy(s);
}

void put_abort(struct session *s)
{
    if (s->file_fd >= 0) {
        close(s->file_fd);
        s->file_fd = -1;
    }
    if (s->tmp_path) {
        unlink(s->tmp_path);
        free(s->tmp_path);
        s->tmp_path = NULL;
    }
}

void get_open(struct session *s, const struct jv *req)
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

bool get_maybe_finish(struct session *s)
{
    if (!s->out_eof_sent[1])
        return false;
    if (s->out_error) {
        session_fail(s, "io_error", "reading the file failed");
        return true;
    }
    struct buf b = { 0 };
    sb_printf(&b, "{\"status\":\"ok\",\"bytes\":%llu}", (unsigned long long)s->bytes);
    session_send_json(s, F_EXIT, &b);
    buf_free(&b);
    session_destroy(s);
    return true;
}
