/* libFuzzer harness for the guest's request handling: raw channel bytes go
 * through the frame decoder into the agent's frame dispatch (agent.c) and
 * the exec request parser (session_exec.c), as they do from the host.
 *
 * No process is ever started: fork(), clone() (the exec spawn path) and
 * kill() are linked to the stubs below (-Wl,--wrap), so an "exec" either
 * fails to start or runs as a pretend child whose pipes stay open. Without
 * them the fuzzer would run the argv it generates on the host. put/get/forward, which touch files
 * and the network, are stubbed to open sessions that accept stream-0 data.
 *
 * Beyond sanitizer reports it checks that everything the guest queues for
 * the host is well-formed frames whose JSON payloads parse, and that no fd
 * outlives the sessions. */
#include "agent.c" /* for its static on_frame/on_oversized */

#include "fuzz_check.h"
#include "fuzz_chunks.h"

static bool g_fork_fails;

pid_t __wrap_fork(void)
{
    if (g_fork_fails) {
        errno = EAGAIN;
        return -1;
    }
    return 0x3ffffff0; /* no such process; kill() below never sends */
}

int __wrap_clone(int (*fn)(void *), void *stack, int flags, void *arg, ...)
{
    (void)fn, (void)stack, (void)flags, (void)arg;
    return __wrap_fork(); /* the child function never runs */
}

int __wrap_kill(pid_t pid, int sig)
{
    (void)pid;
    (void)sig;
    return 0;
}

/* net.c is not linked: a restore re-addresses interfaces only in PID 1, never
 * here, and the fuzzer must not touch the host's network in any case. */
int net_renew(const struct jv *network, const char *hostname)
{
    (void)network, (void)hostname;
    return 0;
}

/* The file and forward kinds, stubbed: open succeeds, stream 0 is taken. */
static void stub_open(struct session *s, const struct jv *req) { (void)s, (void)req; }
static void stub_discarding_open(struct session *s, const struct jv *req) { (void)req, s->in_discard = true; }
static void stub_on_data(struct session *s, const uint8_t *p, size_t n) { (void)p, session_consumed(s, n); }

const struct session_ops put_session_ops = { .size = sizeof(struct session), .open = stub_open,
                                             .on_data = stub_on_data };
const struct session_ops get_session_ops = { .size = sizeof(struct session), .open = stub_discarding_open };
const struct session_ops forward_session_ops = { .size = sizeof(struct session), .open = stub_open };
const struct session_ops accept_session_ops = { .size = sizeof(struct session), .open = stub_open };

/* What the guest sends back must decode, and JSON frames must parse. */
static void check_reply(void *ctx, const struct frame *f)
{
    (void)ctx;
    CHECK(f->type >= F_HELLO && f->type <= F_CLOSE && f->type != F_OPEN);
    if (f->type == F_HELLO || f->type == F_CONTROL || f->type == F_EXIT || f->type == F_ERROR) {
        struct jdoc doc;
        CHECK(json_parse((const char *)f->payload, f->len, &doc) == 0);
        json_free(&doc);
    }
    if (f->type == F_DATA)
        CHECK(f->len >= 1 && f->payload[0] <= STREAM_STDERR);
    if (f->type == F_WINDOW)
        CHECK(f->len == 5 && f->payload[0] == STREAM_STDIN);
}

static void reply_oversized(void *ctx, uint32_t session, uint8_t type, uint32_t len)
{
    (void)ctx, (void)session, (void)type, (void)len;
    CHECK(!"the guest queued an oversized frame");
}

static int lowest_free_fd(void)
{
    int fd = dup(0);
    CHECK(fd >= 0);
    close(fd);
    return fd;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    signal(SIGPIPE, SIG_IGN); /* as agent_init does */
    int free_fd = lowest_free_fd();

    struct agent a = { 0 };
    a.ch.rfd = a.ch.wfd = a.ch.listen_fd = -1;
    a.ch.connected = true;
    a.sig_r = a.sig_w = -1;
    a.poweroff_means = SD_POWEROFF;
    a.host.pdeathsig = true;

    struct chunker c;
    chunker_init(&c, data, size);
    g_fork_fails = c.state & 2;
    struct frame_sink sink = { &a, on_frame, on_oversized };
    /* Like channel_read: stop reading once shutdown is requested. */
    for (size_t off = 0; off < size && !a.shutdown;) {
        size_t k = chunker_next(&c, size - off);
        CHECK(frame_decoder_feed(&a.dec, data + off, k, &sink) == 0);
        off += k;
    }

    struct frame_decoder replies = { 0 };
    struct frame_sink check = { NULL, check_reply, reply_oversized };
    struct buf *q = &a.host.outq;
    if (buf_used(q) > 0)
        CHECK(frame_decoder_feed(&replies, q->data + q->off, buf_used(q), &check) == 0);
    CHECK(replies.hdr_have == 0 && !replies.in_payload); /* no partial frame */
    frame_decoder_free(&replies);

    session_destroy_all(&a.host);
    CHECK(lowest_free_fd() == free_fd);
    frame_decoder_free(&a.dec);
    buf_free(&a.host.outq);
    return 0;
}
