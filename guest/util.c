#define _GNU_SOURCE
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void ma_log(const char *fmt, ...)
{
    char line[1024];
    int saved = errno;
    size_t n = (size_t)snprintf(line, sizeof line, "microagent-init: ");
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        m = 0;
    n += (size_t)m;
    if (n > sizeof line - 2)
        n = sizeof line - 2;
    line[n++] = '\n';
    /* Best effort, one write() so lines do not interleave. */
    ssize_t w = write(2, line, n);
    (void)w;
    errno = saved;
}

int64_t now_unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t now_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

bool wait_for_path(const char *path, int64_t deadline_ms)
{
    for (;;) {
        if (access(path, F_OK) == 0)
            return true;
        if (now_mono_ms() >= deadline_ms)
            return false;
        sleep_ms(20);
    }
}

int set_nonblock(int fd, bool on)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return -1;
    fl = on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
    return fcntl(fd, F_SETFL, fl);
}

int set_cloexec(int fd)
{
    int fl = fcntl(fd, F_GETFD);
    if (fl < 0)
        return -1;
    return fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
}

int write_all_timeout(int fd, const void *p, size_t n, int timeout_ms)
{
    const uint8_t *c = p;
    int64_t deadline = now_mono_ms() + timeout_ms;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w > 0) {
            c += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno != EAGAIN)
            return -1;
        int64_t left = deadline - now_mono_ms();
        if (left <= 0)
            return -1;
        struct pollfd pfd = { .fd = fd, .events = POLLOUT };
        poll(&pfd, 1, (int)left);
    }
    return 0;
}

void ensure_std_fds(void)
{
    for (int fd = 0; fd < 3; fd++) {
        if (fcntl(fd, F_GETFD) >= 0)
            continue;
        int n = open("/dev/null", O_RDWR);
        if (n < 0)
            return;
        if (n != fd) {
            dup2(n, fd);
            close(n);
        }
    }
}

uint8_t *buf_reserve(struct buf *b, size_t n)
{
    if (b->off > 0 && (b->off == b->len || b->off >= b->cap / 2)) {
        memmove(b->data, b->data + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
    }
    if (b->cap - b->len < n) {
        size_t want = b->cap ? b->cap : 4096;
        while (want - b->len < n) {
            if (want > SIZE_MAX / 2)
                return NULL;
            want *= 2;
        }
        uint8_t *d = realloc(b->data, want);
        if (!d)
            return NULL;
        b->data = d;
        b->cap = want;
    }
    return b->data + b->len;
}

int buf_append(struct buf *b, const void *p, size_t n)
{
    uint8_t *d = buf_reserve(b, n);
    if (!d)
        return -1;
    if (n)
        memcpy(d, p, n);
    b->len += n;
    return 0;
}

void buf_consume(struct buf *b, size_t n)
{
    b->off += n;
    if (b->off >= b->len)
        b->off = b->len = 0;
}

void buf_clear(struct buf *b) { b->off = b->len = 0; }

void buf_free(struct buf *b)
{
    free(b->data);
    b->data = NULL;
    b->off = b->len = b->cap = 0;
}

int sb_puts(struct buf *b, const char *s) { return buf_append(b, s, strlen(s)); }

int sb_printf(struct buf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -1;
    if ((size_t)n < sizeof tmp)
        return buf_append(b, tmp, (size_t)n);
    uint8_t *d = buf_reserve(b, (size_t)n + 1);
    if (!d)
        return -1;
    va_start(ap, fmt);
    vsnprintf((char *)d, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

const char *sb_cstr(struct buf *b)
{
    uint8_t *d = buf_reserve(b, 1);
    if (!d)
        return "";
    *d = 0;
    return (const char *)(b->data + b->off);
}

char *read_small_file(const char *path, size_t max, size_t *len_out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t cap = 4096, len = 0;
    char *s = malloc(cap + 1);
    while (s) {
        if (len == cap) {
            if (cap >= max)
                break;
            cap = cap * 2 > max ? max : cap * 2;
            char *t = realloc(s, cap + 1);
            if (!t) {
                free(s);
                s = NULL;
                break;
            }
            s = t;
        }
        ssize_t r = read(fd, s + len, cap - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    if (!s)
        return NULL;
    s[len] = 0;
    if (len_out)
        *len_out = len;
    return s;
}
