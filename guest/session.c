/* What every session kind shares: lifetime, stream-0 intake with flow
 * control, and reading process/file/socket output into DATA frames under
 * the host's credit and the output-queue bound. Kind-specific work goes
 * through the session's ops. */
#define _GNU_SOURCE
#include "session.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "frame.h"
#include "util.h"

struct session *session_new(struct session_host *h, uint32_t id, const struct session_ops *ops)
{
    struct session *s = calloc(1, ops->size);
    if (!s)
        return NULL;
    s->host = h;
    s->id = id;
    s->ops = ops;
    s->in_fd = -1;
    for (int i = 0; i < 3; i++) {
        s->out_fd[i] = -1;
        s->credit[i] = INITIAL_WINDOW;
        s->pidx_out[i] = -1;
    }
    s->pidx_in = s->pidx_wait = -1;
    s->next = h->sessions;
    h->sessions = s;
    return s;
}

struct session *session_find(struct session_host *h, uint32_t id)
{
    for (struct session *s = h->sessions; s; s = s->next)
        if (s->id == id)
            return s;
    return NULL;
}

static bool fd_in_use(const struct session *s, int fd)
{
    return fd >= 0 && (s->in_fd == fd || s->out_fd[1] == fd || s->out_fd[2] == fd);
}

/* Clear one fd slot; close the fd unless another slot still holds it. */
static void drop_fd(struct session *s, int *slot)
{
    int fd = *slot;
    *slot = -1;
    if (fd >= 0 && !fd_in_use(s, fd))
        close(fd);
}

void session_close_out(struct session *s, int st) { drop_fd(s, &s->out_fd[st]); }

void session_close_in(struct session *s)
{
    s->in_closed = true;
    drop_fd(s, &s->in_fd);
}

void session_destroy(struct session *s)
{
    if (s->ops->destroy)
        s->ops->destroy(s);
    drop_fd(s, &s->in_fd);
    drop_fd(s, &s->out_fd[1]);
    drop_fd(s, &s->out_fd[2]);
    buf_free(&s->inbuf);
    for (struct session **pp = &s->host->sessions; *pp; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    }
    free(s);
}

void session_destroy_all(struct session_host *h)
{
    while (h->sessions)
        session_destroy(h->sessions);
}

void session_fail(struct session *s, const char *code, const char *message)
{
    frame_put_error(&s->host->outq, s->id, code, message);
    session_destroy(s);
}

void session_send_json(struct session *s, uint8_t type, struct buf *b)
{
    frame_put(&s->host->outq, s->id, type, b->data + b->off, buf_used(b));
}

void session_exit(struct session *s, struct buf *b)
{
    session_send_json(s, F_EXIT, b);
    buf_free(b);
    session_destroy(s);
}

void session_send_eof(struct session *s, int st)
{
    if (s->out_eof_sent[st])
        return;
    s->out_eof_sent[st] = true;
    if (!s->eof_at_ms)
        s->eof_at_ms = now_mono_ms();
    frame_put_eof(&s->host->outq, s->id, (uint8_t)st);
}

void session_consumed(struct session *s, size_t n)
{
    s->in_consumed += (uint32_t)n;
    if (s->in_consumed >= INITIAL_WINDOW / 2) {
        frame_put_window(&s->host->outq, s->id, STREAM_STDIN, s->in_consumed);
        s->in_unacked -= s->in_consumed;
        s->in_consumed = 0;
    }
}

/* Hand stream-0 EOF to the sink. */
static void deliver_input_eof(struct session *s)
{
    if (s->in_closed)
        return;
    if (s->ops->on_input_eof)
        s->ops->on_input_eof(s);
    else
        session_close_in(s);
}

/* The sink broke (EPIPE, EIO...): drop what is buffered and what comes. */
void session_drop_input(struct session *s)
{
    size_t n = buf_used(&s->inbuf);
    buf_clear(&s->inbuf);
    s->in_discard = true;
    session_consumed(s, n);
    session_close_in(s);
}

void session_flush_input(struct session *s)
{
    while (buf_used(&s->inbuf) > 0 && s->in_fd >= 0 && !s->connecting) {
        ssize_t w = write(s->in_fd, s->inbuf.data + s->inbuf.off, buf_used(&s->inbuf));
        if (w > 0) {
            buf_consume(&s->inbuf, (size_t)w);
            session_consumed(s, (size_t)w);
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            return;
        session_drop_input(s);
        return;
    }
    if (buf_used(&s->inbuf) > 0 && s->in_fd < 0 && !s->connecting) {
        session_drop_input(s);
        return;
    }
    if (buf_used(&s->inbuf) == 0 && s->in_eof && !s->in_closed && !s->connecting)
        deliver_input_eof(s);
}

void session_on_data(struct session *s, const uint8_t *p, size_t n)
{
    if (n == 0) {
        if (s->in_eof)
            return;
        s->in_eof = true;
        if (s->ops->on_data) {
            s->ops->on_data(s, NULL, 0);
            return;
        }
        session_flush_input(s);
        return;
    }
    if (s->in_eof) {
        session_fail(s, "bad_request", "DATA on stream 0 after its EOF");
        return;
    }
    if ((uint64_t)s->in_unacked + n > INITIAL_WINDOW) {
        session_fail(s, "flow_control", "stream 0 exceeded its credit");
        return;
    }
    s->in_unacked += (uint32_t)n;
    s->last_in = p[n - 1];
    if (s->ops->on_data) {
        s->ops->on_data(s, p, n);
        return;
    }
    if (s->in_discard || s->in_closed) {
        session_consumed(s, n);
        return;
    }
    if (buf_append(&s->inbuf, p, n) < 0) {
        session_fail(s, "io_error", "out of memory");
        return;
    }
    session_flush_input(s);
}

void session_on_writable(struct session *s)
{
    if (s->ops->on_writable)
        s->ops->on_writable(s);
    else
        session_flush_input(s);
}

bool session_can_read(const struct session *s, int st)
{
    if (s->out_fd[st] < 0 || s->out_eof_sent[st] || s->connecting)
        return false;
    if (buf_used(&s->host->outq) >= OUTQ_SOFT)
        return false;
    if (s->limit[st] && s->sent[st] >= s->limit[st])
        return true; /* discarding: read regardless of credit */
    return s->credit[st] > 0;
}

static void output_eof(struct session *s, int st)
{
    session_send_eof(s, st);
    session_close_out(s, st);
}

int session_pump_output(struct session *s, int st)
{
    static uint8_t scratch[DATA_CHUNK];
    struct buf *q = &s->host->outq;
    int progress = 0;
    for (int round = 0; round < 8; round++) {
        if (!session_can_read(s, st))
            return progress;
        int fd = s->out_fd[st];
        bool discarding = s->limit[st] && s->sent[st] >= s->limit[st];
        ssize_t r;
        if (discarding) {
            r = read(fd, scratch, sizeof scratch);
            if (r > 0) {
                s->truncated[st] = true;
                progress = 1;
                continue;
            }
        } else {
            size_t chunk = DATA_CHUNK;
            if ((int64_t)chunk > s->credit[st])
                chunk = (size_t)s->credit[st];
            uint8_t *d = buf_reserve(q, FRAME_HEADER + 1 + chunk);
            if (!d)
                return progress;
            r = read(fd, d + FRAME_HEADER + 1, chunk);
            if (r > 0) {
                size_t keep = (size_t)r;
                if (s->limit[st] && s->sent[st] + keep > s->limit[st]) {
                    keep = (size_t)(s->limit[st] - s->sent[st]);
                    s->truncated[st] = true;
                }
                if (keep > 0) {
                    frame_header_put(d, (uint32_t)(keep + 1), s->id, F_DATA);
                    d[FRAME_HEADER] = (uint8_t)st;
                    q->len += FRAME_HEADER + 1 + keep;
                    s->sent[st] += keep;
                    s->credit[st] -= (int64_t)keep;
                }
                progress = 1;
                continue;
            }
        }
        if (r == 0) {
            output_eof(s, st);
            return -1;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN) {
            /* A pty whose process has been reaped: the kernel flushed the
             * tty buffer before answering EAGAIN, so the output is over
             * (background jobs still holding the tty are cut off). */
            if (s->out_writer_gone) {
                output_eof(s, st);
                return -1;
            }
            return progress;
        }
        /* EIO on a pty master (slave closed), ECONNRESET on a socket... */
        if (!(s->out_pty && errno == EIO))
            s->out_error = true;
        output_eof(s, st);
        return -1;
    }
    return progress;
}
