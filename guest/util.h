/* Small helpers shared by every part of microagent-init: logging, clocks,
 * fd flags, growable byte buffers. */
#ifndef MA_UTIL_H
#define MA_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MA_VERSION "0.1.0"
#define MA_AGENT_NAME "microagent-init " MA_VERSION

/* One-line diagnostics on stderr, prefixed "microagent-init: ". */
void ma_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Wall clock in unix milliseconds; monotonic clock in milliseconds. */
int64_t now_unix_ms(void);
int64_t now_mono_ms(void);

void sleep_ms(int ms);
/* Wait (polling every 20 ms) until path exists or the monotonic clock
 * reaches deadline_ms; returns whether it exists. */
bool wait_for_path(const char *path, int64_t deadline_ms);

int set_nonblock(int fd, bool on);
int set_cloexec(int fd);

/* write() the whole buffer to a (possibly non-blocking) fd, waiting with
 * poll() up to timeout_ms in total. Returns 0 or -1. */
int write_all_timeout(int fd, const void *p, size_t n, int timeout_ms);

/* Make sure fds 0, 1 and 2 are open (to /dev/null if need be). */
void ensure_std_fds(void);

/* Growable byte buffer: [off, len) holds the live bytes. */
struct buf {
    uint8_t *data;
    size_t off, len, cap;
};

static inline size_t buf_used(const struct buf *b) { return b->len - b->off; }
/* Make room for n more bytes at data+len; returns that pointer or NULL. */
uint8_t *buf_reserve(struct buf *b, size_t n);
int buf_append(struct buf *b, const void *p, size_t n);
void buf_consume(struct buf *b, size_t n);
void buf_clear(struct buf *b);
void buf_free(struct buf *b);

/* A NUL-terminated string builder on top of struct buf. */
int sb_puts(struct buf *b, const char *s);
int sb_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *sb_cstr(struct buf *b);

/* Read a whole small file into a malloc'ed NUL-terminated string. */
char *read_small_file(const char *path, size_t max, size_t *len_out);

#endif
