/* Sessions (docs/protocol.md, "Sessions"): one struct per open session, the
 * flow-control bookkeeping shared by every kind, and the per-kind entry
 * points implemented in session_exec.c, session_file.c, session_forward.c. */
#ifndef MA_SESSION_H
#define MA_SESSION_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "json.h"
#include "util.h"

struct agent;

enum session_kind { K_EXEC, K_PUT, K_GET, K_FORWARD };

struct session {
    struct session *next;
    struct agent *agent;
    uint32_t id;
    enum session_kind kind;

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

    /* Streams 1 and 2 (guest -> host). */
    int out_fd[3];       /* [1], [2]; may equal in_fd (pty master, socket) */
    int64_t credit[3];   /* host's remaining credit for our sends */
    uint64_t sent[3];    /* data bytes sent */
    uint64_t limit[3];   /* 0 = unlimited */
    bool truncated[3];
    bool out_eof_sent[3];
    bool out_used[3];    /* this stream exists for the session */
    bool out_error;      /* a read failed (not EOF) */

    /* poll() bookkeeping: indices into the agent's pollfd array. */
    int pidx_in, pidx_out[3];

    /* exec */
    pid_t pid;
    bool pty;
    bool running;        /* started and not reaped */
    bool reaped;
    int wstatus;
    bool timed_out;
    int64_t deadline_ms; /* monotonic; 0 = none */
    int64_t started_at_ms, completed_at_ms;

    /* put */
    int file_fd;
    int dir_fd;          /* the destination's directory, reached without foreign symlinks */
    char *path, *tmp_path; /* tmp_path: a name in dir_fd */
    uint32_t mode;
    int64_t uid, gid;
    uint64_t bytes;

    /* forward */
    bool connecting;
};

/* Shared helpers (session.c). */
struct session *session_new(struct agent *a, uint32_t id, enum session_kind kind);
struct session *session_find(struct agent *a, uint32_t id);
/* Kill processes, close fds, remove temp files, unlink and free. Sends
 * nothing. */
void session_destroy(struct session *s);
/* Queue ERROR on the session and destroy it. */
void session_fail(struct session *s, const char *code, const char *message);
/* Queue a JSON frame (payload in b) for this session. */
void session_send_json(struct session *s, uint8_t type, struct buf *b);
/* Queue EOF on stream st unless already sent. */
void session_send_eof(struct session *s, int st);
/* Account n consumed stream-0 bytes; sends WINDOW at half the window. */
void session_consumed(struct session *s, size_t n);
/* Host DATA on stream 0 (len 0 = EOF). */
void session_on_data(struct session *s, const uint8_t *p, size_t n);
/* Pump stream-0 data from inbuf into in_fd (non-blocking). */
void session_flush_input(struct session *s);
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

/* Kinds. open_* parse the OPEN payload; on error they call session_fail. */
void exec_open(struct session *s, const struct jv *req, bool shell);
void exec_control(struct session *s, const struct jv *msg);
void exec_reaped(struct session *s, int wstatus);
void exec_on_input_eof(struct session *s);
void exec_check_timeout(struct session *s, int64_t now);
bool exec_maybe_finish(struct session *s);
void exec_kill(struct session *s, int sig);

void put_open(struct session *s, const struct jv *req);
void put_on_data(struct session *s, const uint8_t *p, size_t n);
void put_abort(struct session *s);
void get_open(struct session *s, const struct jv *req);
bool get_maybe_finish(struct session *s);

void forward_open(struct session *s, const struct jv *req);
void forward_on_writable(struct session *s);
bool forward_maybe_finish(struct session *s);

#endif
