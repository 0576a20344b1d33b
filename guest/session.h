/* Sessions (docs/protocol.md, "Sessions"): what every kind shares (lifetime,
 * stream-0 intake with flow control, output pumped under the host's credit)
 * and the table of functions through which the agent drives a kind. Each
 * kind (session_exec.c, session_file.c, session_forward.c) keeps its own
 * state in a struct that starts with struct session. Sessions know nothing
 * of the agent beyond struct session_host. */
#ifndef MA_SESSION_H
#define MA_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "json.h"
#include "util.h"

/* Sessions stop reading their processes while the output queue holds this
 * much (the agent stops reading the channel at a higher mark). */
#define OUTQ_SOFT (1u << 20)

struct session;

/* What sessions may use of the connection that owns them: the list they
 * live in, the output queue towards the host, and what exec inherits. */
struct session_host {
    struct session *sessions;
    struct buf outq;
    char **boot_env;     /* KEY=VALUE entries of the per-boot config */
    size_t n_boot_env;
    bool pdeathsig;      /* children die with the agent (agent mode, not PID 1) */
};

/* One kind of session. Optional entries may be NULL (the generic behaviour
 * named with each). Any entry may end the session (session_destroy). */
struct session_ops {
    size_t size;         /* of the kind's struct, which starts with struct session */
    /* Parse the OPEN request and start; on a bad request it ends the session. */
    void (*open)(struct session *s, const struct jv *req);
    /* Stream-0 bytes (n == 0: EOF) once their credit is checked. NULL: they
     * are buffered and written to in_fd. */
    void (*on_data)(struct session *s, const uint8_t *p, size_t n);
    /* Stream-0 EOF reaches the sink after the buffered bytes. NULL: close it. */
    void (*on_input_eof)(struct session *s);
    /* in_fd is writable. NULL: session_flush_input. */
    void (*on_writable)(struct session *s);
    /* A CONTROL message from the host. NULL: ignored. */
    void (*on_control)(struct session *s, const struct jv *msg);
    /* The session's work is over: send EXIT and end it, returning true. */
    bool (*maybe_finish)(struct session *s);
    /* Once per loop turn; deadline_ms has passed when now >= deadline_ms. */
    void (*check_timeout)(struct session *s, int64_t now);
    /* A child exited: true when it was this session's process. */
    bool (*on_child_exit)(struct session *s, pid_t pid, int wstatus);
    /* The process group the session runs (signalled on shutdown), or 0. */
    pid_t (*process_group)(const struct session *s);
    /* Release the kind's resources (processes, temp files); sends nothing. */
    void (*destroy)(struct session *s);
    /* An fd to poll for POLLIN besides the session's streams (accept: the
     * shared listener while the session waits for a connection), or -1.
     * NULL: none. */
    int (*wait_fd)(const struct session *s);
    /* wait_fd is readable. */
    void (*on_wait_ready)(struct session *s);
};

/* The kinds a host may OPEN. */
extern const struct session_ops exec_session_ops, shell_session_ops, put_session_ops,
    get_session_ops, forward_session_ops, accept_session_ops;

/* forward and accept share the spliced-socket behaviour (session_forward.c):
 * the host's EOF becomes the socket's FIN; EXIT once both directions ended. */
void forward_half_close(struct session *s);
bool forward_finish(struct session *s);

/* Listen on 127.0.0.1:port for accept sessions (session_accept.c); guest
 * init calls it at boot when the per-boot config asks for a proxy port, so
 * connections made before the host opens its first accept wait in the
 * backlog. Returns 0, or -1 with errno. */
int accept_listen(int port);

struct session {
    struct session *next;
    struct session_host *host;
    uint32_t id;
    const struct session_ops *ops;

    /* Stream 0 (host -> guest): bytes received but not yet granted back,
     * bytes consumed since the last WINDOW, and data waiting for the sink. */
    uint32_t in_unacked;
    uint32_t in_consumed;
    struct buf inbuf;
    bool in_eof;         /* host sent EOF on stream 0 */
    bool in_closed;      /* sink closed (EOF delivered, or sink is gone) */
    bool in_discard;     /* drop stream 0 data (no stdin, or sink broke) */
    int in_fd;           /* sink fd, -1 if none */
    uint8_t last_in;     /* last stream-0 byte received (pty EOF) */
    bool connecting;     /* in_fd is a socket still connecting: wait for POLLOUT */

    /* Streams 1 and 2 (guest -> host). */
    int out_fd[3];       /* [1], [2]; may equal in_fd (pty master, socket) */
    int64_t credit[3];   /* host's remaining credit for our sends */
    uint64_t sent[3];    /* data bytes sent */
    uint64_t limit[3];   /* 0 = unlimited */
    bool truncated[3];
    bool out_eof_sent[3];
    int64_t eof_at_ms;   /* monotonic: when its first output EOF was queued; 0 = none yet */
    bool out_used[3];    /* this stream exists for the session */
    bool out_error;      /* a read failed (not EOF) */
    bool out_pty;        /* stream 1 is a pty master: EIO is its EOF */
    /* Nothing more will be written to stream 1 (a pty whose process was
     * reaped): EAGAIN ends it, and it is read every loop turn because a tty
     * may never report POLLIN. */
    bool out_writer_gone;

    int64_t deadline_ms; /* monotonic: when check_timeout has work; 0 = none */

    /* poll() bookkeeping: indices into the agent's pollfd array. */
    int pidx_in, pidx_out[3], pidx_wait;
};

/* Allocate ops->size bytes, link the session into host's list. */
struct session *session_new(struct session_host *h, uint32_t id, const struct session_ops *ops);
struct session *session_find(struct session_host *h, uint32_t id);
/* Kill processes, close fds, remove temp files, unlink and free. Sends
 * nothing. */
void session_destroy(struct session *s);
/* Destroy every session. */
void session_destroy_all(struct session_host *h);
/* Queue ERROR on the session and destroy it. */
void session_fail(struct session *s, const char *code, const char *message);
/* Queue a JSON frame (payload in b) for this session. */
void session_send_json(struct session *s, uint8_t type, struct buf *b);
/* Queue EXIT (payload in b, then freed) and destroy the session. */
void session_exit(struct session *s, struct buf *b);
/* Queue EOF on stream st unless already sent. */
void session_send_eof(struct session *s, int st);
/* Account n consumed stream-0 bytes; sends WINDOW at half the window. */
void session_consumed(struct session *s, size_t n);
/* Host DATA on stream 0 (len 0 = EOF). */
void session_on_data(struct session *s, const uint8_t *p, size_t n);
/* Pump stream-0 data from inbuf into in_fd (non-blocking). */
void session_flush_input(struct session *s);
/* in_fd is writable: the kind's on_writable, else session_flush_input. */
void session_on_writable(struct session *s);
/* Read from out_fd[st] into DATA frames as credit and the queue allow.
 * Returns: 1 progress, 0 nothing (EAGAIN), -1 EOF/error (EOF sent). */
int session_pump_output(struct session *s, int st);
/* May this output stream be read now? */
bool session_can_read(const struct session *s, int st);
/* Closes the fd(s) of an output stream, keeping a shared in_fd open. */
void session_close_out(struct session *s, int st);
void session_close_in(struct session *s);
/* Drop buffered stream-0 data and discard all that follows. */
void session_drop_input(struct session *s);

#endif
