/* The protocol engine: a single-threaded poll() loop over the channel, the
 * signal self-pipe and every session's fds. Frames are dispatched to the
 * sessions through their kind's ops (session.h); output goes through one
 * bounded queue to the channel.
 *
 * Module map (each header includes only those below it):
 *
 *   main.c            arguments; PID 1 or agent mode
 *   boot.c            PID 1: mounts, config, network, then agent_run, power-off
 *     net.c, dhcp.c   PID 1: the config disk's network
 *   agent.c           this loop: channel, HELLO/OPEN/shutdown, reaping
 *     service.c       PID 1: the config disk's service (restarts, its log)
 *     channel.c       opening the transport (struct channel)
 *     session.c       what every session kind shares; struct session_ops
 *       session_exec.c     exec and shell (user.c: passwd/group lookups)
 *       session_file.c     put and get
 *       session_forward.c  forward
 *       session_accept.c   accept (forward in reverse: the egress proxy)
 *   frame.c, json.c, util.c   framing, JSON, logging/clocks/buffers */
#define _GNU_SOURCE
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "json.h"
#include "net.h"
#include "service.h"

static int g_sig_w = -1;
static volatile sig_atomic_t g_term;

static void on_signal(int sig)
{
    int saved = errno;
    if (sig == SIGTERM || sig == SIGINT || sig == SIGHUP)
        g_term = 1;
    if (g_sig_w >= 0) {
        ssize_t w = write(g_sig_w, "x", 1);
        (void)w;
    }
    errno = saved;
}

int agent_init(struct agent *a, bool pid1)
{
    a->pid1 = pid1;
    a->ch.rfd = a->ch.wfd = a->ch.listen_fd = -1;
    a->poweroff_means = SD_POWEROFF;
    a->host.pdeathsig = !pid1;
    int p[2];
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0)
        return -1;
    a->sig_r = p[0];
    a->sig_w = p[1];
    g_sig_w = p[1];
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGCHLD, &sa, NULL);
    if (!pid1) {
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGHUP, &sa, NULL);
    }
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

static void agent_queue_error(struct agent *a, uint32_t session, const char *code, const char *message)
{
    frame_put_error(&a->host.outq, session, code, message);
}

/* ---- children ---------------------------------------------------------- */

/* Hand an exited child to the session that started it, if any. */
static void child_exited(struct agent *a, pid_t pid, int wstatus)
{
    if (service_child_exited(pid, wstatus))
        return;
    for (struct session *s = a->host.sessions; s; s = s->next)
        if (s->ops->on_child_exit && s->ops->on_child_exit(s, pid, wstatus))
            return;
}

static pid_t process_group(const struct session *s)
{
    return s->ops->process_group ? s->ops->process_group(s) : 0;
}

/* Reap every child that has exited (as PID 1: every orphan too).
 * Returns false once there are no children left at all. */
static bool reap_children(struct agent *a)
{
    for (;;) {
        int st;
        pid_t p = waitpid(-1, &st, WNOHANG);
        if (p > 0) {
            child_exited(a, p, st);
            continue;
        }
        if (p < 0 && errno == EINTR)
            continue;
        return !(p < 0 && errno == ECHILD);
    }
}

static bool session_groups_gone(struct agent *a)
{
    for (struct session *s = a->host.sessions; s; s = s->next) {
        pid_t pg = process_group(s);
        if (pg > 0 && (kill(-pg, 0) == 0 || errno != ESRCH))
            return false;
    }
    return true;
}

static void signal_all(struct agent *a, int sig)
{
    if (a->pid1) {
        kill(-1, sig);
        return;
    }
    for (struct session *s = a->host.sessions; s; s = s->next) {
        pid_t pg = process_group(s);
        if (pg > 0)
            kill(-pg, sig);
    }
}

/* Wait until every process is gone (or, with children_only, until we have
 * no children left to reap) or the deadline passes. Outside PID 1 only
 * direct children can be reaped; killed grandchildren are the outer init's. */
static bool wait_all_gone(struct agent *a, int64_t deadline, bool children_only)
{
    for (;;) {
        bool any_children = reap_children(a);
        bool gone = (a->pid1 || children_only) ? !any_children : session_groups_gone(a);
        if (gone)
            return true;
        if (now_mono_ms() >= deadline)
            return false;
        sleep_ms(10);
    }
}

/* Terminate every process (PID 1: all; agent: sessions): sig, then SIGKILL
 * after grace_ms. */
static void terminate_all(struct agent *a, int sig, int64_t grace_ms)
{
    signal_all(a, sig > 0 ? sig : SIGTERM);
    if (!wait_all_gone(a, now_mono_ms() + grace_ms, false)) {
        ma_log("processes still running after %lld ms; sending SIGKILL", (long long)grace_ms);
        signal_all(a, SIGKILL);
        wait_all_gone(a, now_mono_ms() + 2000, true);
    }
}

/* ---- the channel ------------------------------------------------------- */

static void channel_lost(struct agent *a, const char *why)
{
    struct channel *ch = &a->ch;
    if (a->hello_done || a->host.sessions)
        ma_log("host disconnected (%s); resetting sessions", why);
    session_destroy_all(&a->host);
    a->hello_done = false;
    frame_decoder_reset(&a->dec);
    buf_clear(&a->host.outq);
    switch (ch->kind) {
    case CH_FD:
        ch->connected = false;
        break;
    case CH_LISTEN:
        if (ch->rfd >= 0)
            close(ch->rfd);
        ch->rfd = ch->wfd = -1;
        ch->connected = false;
        break;
    case CH_VPORT: {
        /* Drop whatever the old host left in the port. */
        uint8_t junk[4096];
        for (int i = 0; i < 1024; i++) {
            ssize_t r = read(ch->rfd, junk, sizeof junk);
            if (r <= 0)
                break;
        }
        ch->connected = false;
        break;
    }
    }
}

/* virtio-serial: the host is there when the port does not report POLLHUP. */
static void vport_check(struct agent *a)
{
    struct pollfd p = { .fd = a->ch.rfd, .events = POLLIN };
    if (poll(&p, 1, 0) >= 0 && !(p.revents & (POLLHUP | POLLERR | POLLNVAL))) {
        a->ch.connected = true;
        a->hello_done = false;
        frame_decoder_reset(&a->dec);
        buf_clear(&a->host.outq);
        ma_log("host connected");
    }
}

static void channel_accept(struct agent *a)
{
    int fd = accept4(a->ch.listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        return;
    a->ch.rfd = a->ch.wfd = fd;
    a->ch.connected = true;
    a->hello_done = false;
    frame_decoder_reset(&a->dec);
    buf_clear(&a->host.outq);
}

static void channel_flush(struct agent *a)
{
    struct channel *ch = &a->ch;
    while (ch->connected && buf_used(&a->host.outq) > 0) {
        ssize_t w = write(ch->wfd, a->host.outq.data + a->host.outq.off, buf_used(&a->host.outq));
        if (w > 0) {
            buf_consume(&a->host.outq, (size_t)w);
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            return;
        channel_lost(a, w < 0 ? strerror(errno) : "write returned 0");
        return;
    }
}

/* ---- frames ------------------------------------------------------------ */

static void send_hello(struct agent *a)
{
    struct buf b = { 0 };
    sb_printf(&b,
              "{\"protocol\":\"microagent-channel\",\"version\":1,\"role\":\"guest\","
              "\"agent\":\"%s\",\"pid\":%d,\"generation\":%lld,"
              "\"features\":[\"exec\",\"shell\",\"put\",\"get\",\"forward\",\"accept\",\"shutdown\",\"restore\"]}",
              MA_AGENT_NAME, (int)getpid(), (long long)a->generation);
    frame_put(&a->host.outq, 0, F_HELLO, b.data + b.off, buf_used(&b));
    buf_free(&b);
}

static void on_hello(struct agent *a, const struct frame *f)
{
    struct jdoc doc;
    if (a->hello_done || a->host.sessions)
        session_destroy_all(&a->host);
    a->hello_done = false;
    if (json_parse((const char *)f->payload, f->len, &doc) < 0) {
        agent_queue_error(a, 0, "bad_request", "HELLO payload is not a JSON object");
        return;
    }
    int64_t version = 0, generation = 0;
    const char *proto = NULL;
    int vr = jfield_int(doc.root, "version", INT64_MIN, INT64_MAX, &version);
    int pr = jfield_str(doc.root, "protocol", &proto);
    /* a host that restored this guest from a snapshot says which restore it was */
    if (jfield_int(doc.root, "generation", 0, INT64_MAX, &generation) == 1)
        a->generation = generation;
    if (vr != 1 || pr < 0) {
        agent_queue_error(a, 0, "bad_request", "HELLO needs an integer version");
    } else if (pr == 1 && strcmp(proto, "microagent-channel") != 0) {
        agent_queue_error(a, 0, "bad_request", "unknown protocol");
    } else if (version != 1) {
        agent_queue_error(a, 0, "version_mismatch", "this guest speaks version 1");
    } else {
        a->hello_done = true;
        send_hello(a);
    }
    json_free(&doc);
}

static void on_shutdown(struct agent *a, uint32_t id, const struct jv *req)
{
    const char *action = "poweroff";
    int64_t grace = 5000, sig = SIGTERM;
    if (jfield_str(req, "action", &action) < 0 ||
        jfield_int(req, "grace_ms", 0, 24 * 3600 * 1000, &grace) < 0 ||
        jfield_int(req, "signal", 1, 64, &sig) < 0 ||
        (strcmp(action, "poweroff") != 0 && strcmp(action, "reboot") != 0)) {
        agent_queue_error(a, id, "bad_request",
                          "action must be poweroff or reboot, grace_ms an integer, signal 1..64");
        return;
    }
    a->stop_signal = (int)sig;
    frame_put(&a->host.outq, id, F_EXIT, "{\"status\":\"ok\"}", 15);
    a->shutdown = strcmp(action, "reboot") == 0 ? SD_REBOOT : a->poweroff_means;
    a->grace_ms = grace;
}

/* <linux/random.h> (musl has none; the ABI is fixed) */
#define MA_RNDADDENTROPY 0x40085203 /* _IOW('R', 0x03, int[2]) */
#define MA_RNDRESEEDCRNG 0x5207     /* _IO('R', 0x07) */
#define RESTORE_ENTROPY_MAX 256

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* After a snapshot restore the clock is the snapshot's, the random pool is
 * every other restore's, and the hostname and network the original's: the
 * host sends the time, fresh entropy, the name, the network (the config
 * disk's shape) and the restore generation to report. */
static void on_restore(struct agent *a, uint32_t id, const struct jv *req)
{
    int64_t time_ns = 0, generation = 0;
    const char *entropy = NULL, *hostname = NULL;
    if (jfield_int(req, "timeNs", 1, INT64_MAX, &time_ns) != 1 ||
        jfield_int(req, "generation", 0, INT64_MAX, &generation) != 1 ||
        jfield_str(req, "entropy", &entropy) != 1 || jfield_str(req, "hostname", &hostname) < 0) {
        agent_queue_error(a, id, "bad_request", "restore needs timeNs, generation and entropy");
        return;
    }
    size_t hex = strlen(entropy), n = hex / 2;
    if (hex % 2 || n == 0 || n > RESTORE_ENTROPY_MAX) {
        agent_queue_error(a, id, "bad_request", "entropy must be 1 to 256 bytes of hex");
        return;
    }
    struct {
        int entropy_count, buf_size;
        unsigned char buf[RESTORE_ENTROPY_MAX];
    } pool = { .entropy_count = (int)n * 8, .buf_size = (int)n };
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(entropy[2 * i]), lo = hexval(entropy[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            agent_queue_error(a, id, "bad_request", "entropy must be lowercase hex");
            return;
        }
        pool.buf[i] = (unsigned char)(hi << 4 | lo);
    }
    if (hostname && (strlen(hostname) == 0 || strlen(hostname) > 64)) {
        agent_queue_error(a, id, "bad_request", "hostname must be 1 to 64 bytes");
        return;
    }
    struct timespec ts = { .tv_sec = time_ns / 1000000000, .tv_nsec = time_ns % 1000000000 };
    const char *failed = NULL;
    if (clock_settime(CLOCK_REALTIME, &ts) < 0)
        failed = "clock_settime";
    int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
    if (fd < 0 || ioctl(fd, MA_RNDADDENTROPY, &pool) < 0 || ioctl(fd, MA_RNDRESEEDCRNG) < 0)
        failed = failed ? failed : "RNDADDENTROPY/RNDRESEEDCRNG";
    if (fd >= 0)
        close(fd);
    explicit_bzero(&pool, sizeof pool);
    if (hostname && sethostname(hostname, strlen(hostname)) < 0)
        failed = failed ? failed : "sethostname";
    if (failed) {
        char msg[128];
        snprintf(msg, sizeof msg, "%s: %s", failed, strerror(errno));
        agent_queue_error(a, id, "io_error", msg);
        return;
    }
    /* A fork's network is not the snapshot's: new MAC, address, gateway, DNS
     * and hosts (net.c; PID 1 only: agent mode owns no interfaces). */
    const struct jv *network = jget(req, "network");
    if (a->pid1 && network && network->type != J_NULL) {
        char name[65] = "";
        if (!hostname)
            gethostname(name, sizeof name - 1);
        if (net_renew(network, hostname ? hostname : name) < 0) {
            agent_queue_error(a, id, "io_error",
                              "network: an interface could not be configured (see the serial log)");
            return;
        }
    }
    a->generation = generation;
    ma_log("restored (generation %lld)", (long long)generation);
    frame_put(&a->host.outq, id, F_EXIT, "{\"status\":\"ok\"}", 15);
}

/* The session kinds a host may OPEN ("shutdown" and "restore" are not sessions). */
static const struct {
    const char *name;
    const struct session_ops *ops;
} session_kinds[] = {
    { "exec", &exec_session_ops },
    { "shell", &shell_session_ops },
    { "put", &put_session_ops },
    { "get", &get_session_ops },
    { "forward", &forward_session_ops },
    { "accept", &accept_session_ops },
};

static const struct session_ops *kind_ops(const char *name)
{
    for (size_t i = 0; i < sizeof session_kinds / sizeof session_kinds[0]; i++)
        if (strcmp(session_kinds[i].name, name) == 0)
            return session_kinds[i].ops;
    return NULL;
}

static void on_open(struct agent *a, const struct frame *f)
{
    struct session *old = session_find(&a->host, f->session);
    if (old) {
        /* The ERROR ends the id for the host, so it ends it here too. */
        session_destroy(old);
        agent_queue_error(a, f->session, "session_exists", "session id already open");
        return;
    }
    struct jdoc doc;
    if (json_parse((const char *)f->payload, f->len, &doc) < 0) {
        agent_queue_error(a, f->session, "bad_request", "OPEN payload is not a JSON object");
        return;
    }
    const char *kind = NULL;
    if (jfield_str(doc.root, "kind", &kind) != 1) {
        agent_queue_error(a, f->session, "bad_request", "OPEN needs a string kind");
        json_free(&doc);
        return;
    }
    if (strcmp(kind, "shutdown") == 0) {
        on_shutdown(a, f->session, doc.root);
        json_free(&doc);
        return;
    }
    if (strcmp(kind, "restore") == 0) {
        on_restore(a, f->session, doc.root);
        json_free(&doc);
        return;
    }
    const struct session_ops *ops = kind_ops(kind);
    if (!ops) {
        char msg[128];
        snprintf(msg, sizeof msg, "unknown kind '%.64s'", kind);
        agent_queue_error(a, f->session, "bad_request", msg);
        json_free(&doc);
        return;
    }
    struct session *s = session_new(&a->host, f->session, ops);
    if (!s) {
        agent_queue_error(a, f->session, "io_error", "out of memory");
        json_free(&doc);
        return;
    }
    ops->open(s, doc.root);
    json_free(&doc);
}

static void finish_boot(struct agent *a)
{
    void (*rest)(struct agent *) = a->boot_rest;
    a->boot_rest = NULL;
    if (rest)
        rest(a);
}

static void on_frame(void *ctx, const struct frame *f)
{
    struct agent *a = ctx;
    if (a->shutdown)
        return;
    if (f->type == F_HELLO) {
        if (f->session != 0) {
            agent_queue_error(a, f->session, "bad_request", "HELLO belongs on session 0");
            return;
        }
        on_hello(a, f);
        return;
    }
    finish_boot(a); /* a request never sees the boot unfinished */
    if (f->session == 0) {
        if (!a->hello_done)
            return;
        if (f->type < F_HELLO || f->type > F_CLOSE)
            agent_queue_error(a, 0, "unknown_frame", "unknown frame type");
        else if (f->type == F_OPEN)
            agent_queue_error(a, 0, "bad_request", "session 0 is the connection itself");
        return; /* other frames on session 0 carry nothing for us */
    }
    if (!a->hello_done) {
        agent_queue_error(a, f->session, "no_hello", "HELLO first");
        return;
    }
    struct session *s = session_find(&a->host, f->session);
    if (f->type < F_HELLO || f->type > F_CLOSE) {
        if (s)
            session_destroy(s);
        agent_queue_error(a, f->session, "unknown_frame", "unknown frame type");
        return;
    }
    if (f->type == F_OPEN) {
        on_open(a, f);
        return;
    }
    if (!s)
        return; /* late frames for a session that has ended */
    switch (f->type) {
    case F_DATA:
        if (f->len < 1 || f->payload[0] != STREAM_STDIN) {
            session_fail(s, "bad_request", "the host sends DATA on stream 0 only");
            return;
        }
        session_on_data(s, f->payload + 1, f->len - 1);
        return;
    case F_WINDOW: {
        if (f->len != 5) {
            session_fail(s, "bad_request", "WINDOW payload is 5 bytes");
            return;
        }
        uint8_t st = f->payload[0];
        if (st > 2) {
            session_fail(s, "bad_request", "unknown stream id");
            return;
        }
        if (st != STREAM_STDIN) {
            s->credit[st] += be32(f->payload + 1);
            if (s->credit[st] > (int64_t)1 << 40)
                s->credit[st] = (int64_t)1 << 40;
        }
        return;
    }
    case F_CONTROL: {
        struct jdoc doc;
        if (json_parse((const char *)f->payload, f->len, &doc) < 0) {
            session_fail(s, "bad_request", "CONTROL payload is not a JSON object");
            return;
        }
        if (s->ops->on_control)
            s->ops->on_control(s, doc.root);
        json_free(&doc);
        return;
    }
    case F_CLOSE:
    case F_ERROR:
        session_destroy(s);
        return;
    case F_EXIT:
        session_fail(s, "bad_request", "EXIT is sent by the guest only");
        return;
    default:
        return;
    }
}

static void on_oversized(void *ctx, uint32_t session, uint8_t type, uint32_t len)
{
    struct agent *a = ctx;
    (void)type;
    if (a->shutdown)
        return;
    char msg[96];
    snprintf(msg, sizeof msg, "frame payload of %u bytes exceeds 1048576", len);
    struct session *s = session ? session_find(&a->host, session) : NULL;
    if (s)
        session_destroy(s);
    agent_queue_error(a, session, "frame_too_large", msg);
}

static void channel_read(struct agent *a)
{
    static uint8_t rbuf[64 * 1024];
    struct frame_sink sink = { a, on_frame, on_oversized };
    for (int i = 0; i < 4 && a->ch.connected && buf_used(&a->host.outq) < OUTQ_HARD && !a->shutdown; i++) {
        ssize_t r = read(a->ch.rfd, rbuf, sizeof rbuf);
        if (r > 0) {
            if (frame_decoder_feed(&a->dec, rbuf, (size_t)r, &sink) < 0)
                channel_lost(a, "out of memory");
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN)
            return;
        channel_lost(a, r == 0 ? "end of file" : strerror(errno));
        return;
    }
}

/* ---- the loop ---------------------------------------------------------- */

struct pollset {
    struct pollfd *p;
    size_t n, cap;
};

static int ps_add(struct pollset *ps, int fd, short events)
{
    for (size_t i = 0; i < ps->n; i++) {
        if (ps->p[i].fd == fd) {
            ps->p[i].events |= events;
            return (int)i;
        }
    }
    if (ps->n == ps->cap) {
        size_t cap = ps->cap ? ps->cap * 2 : 32;
        struct pollfd *np = realloc(ps->p, cap * sizeof *np);
        if (!np)
            return -1;
        ps->p = np;
        ps->cap = cap;
    }
    ps->p[ps->n] = (struct pollfd){ .fd = fd, .events = events };
    return (int)ps->n++;
}

static short ps_revents(const struct pollset *ps, int idx, int fd)
{
    if (idx < 0 || (size_t)idx >= ps->n || ps->p[idx].fd != fd)
        return 0;
    return ps->p[idx].revents;
}

static void finish_sessions(struct agent *a)
{
    struct session *next;
    for (struct session *s = a->host.sessions; s; s = next) {
        next = s->next;
        if (s->ops->maybe_finish)
            s->ops->maybe_finish(s);
    }
}

static enum shutdown_action do_shutdown(struct agent *a)
{
    if (a->ch.connected && buf_used(&a->host.outq) > 0)
        write_all_timeout(a->ch.wfd, a->host.outq.data + a->host.outq.off, buf_used(&a->host.outq), 2000);
    buf_clear(&a->host.outq);
    ma_log("shutting down (%s)", !a->pid1 ? "exit" : a->shutdown == SD_REBOOT ? "reboot" : "poweroff");
    service_stop(); /* its exit below must not schedule a restart */
    terminate_all(a, a->stop_signal, a->grace_ms);
    session_destroy_all(&a->host);
    return a->shutdown;
}

static enum shutdown_action agent_exit(struct agent *a, const char *why)
{
    ma_log("%s; exiting", why);
    session_destroy_all(&a->host);
    wait_all_gone(a, now_mono_ms() + 1000, true);
    return SD_NONE;
}

static enum shutdown_action agent_loop(struct agent *a, struct pollset *pset);

enum shutdown_action agent_run(struct agent *a)
{
    struct pollset ps = { 0 };
    enum shutdown_action r = agent_loop(a, &ps);
    free(ps.p);
    return r;
}

/* A command's output ends a moment before its exit is reaped (and one pipe's
 * end before the other's): queued frames wait up to SETTLE_MS after a
 * session's first EOF for the rest, so EOFs and EXIT leave in one write.
 * Under emulation each write to the port costs the guest about a millisecond. */
#define SETTLE_MS 2

static bool sessions_settling(const struct agent *a, int64_t now)
{
    for (const struct session *s = a->host.sessions; s; s = s->next)
        if (s->eof_at_ms && now - s->eof_at_ms < SETTLE_MS)
            return true;
    return false;
}

static enum shutdown_action agent_loop(struct agent *a, struct pollset *pset)
{
    struct pollset ps = *pset;
    struct channel *ch = &a->ch;
    int64_t hold_until = 0; /* queued frames wait for a settling session until then */
    for (;;) {
        *pset = ps;
        if (a->shutdown)
            return do_shutdown(a);
        if (!a->pid1 && g_term)
            return agent_exit(a, "terminated by signal");
        if (ch->kind == CH_FD && !ch->connected)
            return agent_exit(a, "host closed the channel");
        if (ch->kind == CH_VPORT && !ch->connected)
            vport_check(a);

        /* Build the poll set. */
        ps.n = 0;
        int sig_idx = ps_add(&ps, a->sig_r, POLLIN);
        int ch_r = -1, ch_w = -1, lis = -1;
        int64_t hold_left = hold_until ? hold_until - now_mono_ms() : 0;
        if (ch->connected) {
            if (buf_used(&a->host.outq) < OUTQ_HARD)
                ch_r = ps_add(&ps, ch->rfd, POLLIN);
            if (buf_used(&a->host.outq) > 0 && hold_left <= 0)
                ch_w = ps_add(&ps, ch->wfd, POLLOUT);
        } else if (ch->kind == CH_LISTEN) {
            lis = ps_add(&ps, ch->listen_fd, POLLIN);
        }
        int timeout = -1;
        int64_t now = now_mono_ms();
        for (struct session *s = a->host.sessions; s; s = s->next) {
            s->pidx_in = s->pidx_out[1] = s->pidx_out[2] = s->pidx_wait = -1;
            int wfd = s->ops->wait_fd ? s->ops->wait_fd(s) : -1;
            if (wfd >= 0)
                s->pidx_wait = ps_add(&ps, wfd, POLLIN);
            if (s->in_fd >= 0 && !s->in_closed && (buf_used(&s->inbuf) > 0 || s->connecting))
                s->pidx_in = ps_add(&ps, s->in_fd, POLLOUT);
            for (int st = 1; st <= 2; st++)
                if (session_can_read(s, st))
                    s->pidx_out[st] = ps_add(&ps, s->out_fd[st], POLLIN);
            if (s->deadline_ms) {
                int64_t left = s->deadline_ms - now;
                if (left < 0)
                    left = 0;
                if (timeout < 0 || left < timeout)
                    timeout = (int)(left > 1000000 ? 1000000 : left);
            }
        }
        if (ch->kind == CH_VPORT && !ch->connected && (timeout < 0 || timeout > 50))
            timeout = 50;
        if (hold_left > 0 && (timeout < 0 || hold_left < timeout))
            timeout = (int)hold_left;
        int svc_fd = service_fd(), svc_idx = svc_fd >= 0 ? ps_add(&ps, svc_fd, POLLIN) : -1;
        int svc_left = service_timeout_ms(now);
        if (svc_left >= 0 && (timeout < 0 || svc_left < timeout))
            timeout = svc_left;

        int n = poll(ps.p, ps.n, timeout);
        if (n < 0 && errno != EINTR) {
            ma_log("poll: %s", strerror(errno));
            sleep_ms(10);
            continue;
        }
        if (n < 0)
            continue;

        /* Session I/O. */
        struct session *next;
        for (struct session *s = a->host.sessions; s; s = next) {
            next = s->next;
            if (s->pidx_wait >= 0 && ps_revents(&ps, s->pidx_wait, s->ops->wait_fd(s)))
                s->ops->on_wait_ready(s);
            short rin = ps_revents(&ps, s->pidx_in, s->in_fd);
            if (rin) {
                /* A failed connect ends the session; no session is created
                 * in this phase, so looking the id up again is safe. */
                uint32_t id = s->id;
                session_on_writable(s);
                if (session_find(&a->host, id) != s)
                    continue;
            }
            for (int st = 1; st <= 2; st++) {
                short r = ps_revents(&ps, s->pidx_out[st], s->out_fd[st]);
                if (r & (POLLIN | POLLHUP | POLLERR))
                    session_pump_output(s, st);
            }
        }

        /* Signals: reap. */
        if (ps_revents(&ps, sig_idx, a->sig_r)) {
            char junk[64];
            while (read(a->sig_r, junk, sizeof junk) > 0)
                ;
        }
        if (svc_idx >= 0 && ps_revents(&ps, svc_idx, svc_fd))
            service_on_output();
        reap_children(a);
        service_tick(now_mono_ms());

        /* Timeouts; ptys of reaped processes drain without waiting for
         * POLLIN (the tty may never report it). */
        now = now_mono_ms();
        for (struct session *s = a->host.sessions; s; s = s->next) {
            if (s->ops->check_timeout)
                s->ops->check_timeout(s, now);
            if (s->out_writer_gone)
                session_pump_output(s, STREAM_STDOUT);
        }

        /* The channel. */
        if (lis >= 0 && ps_revents(&ps, lis, ch->listen_fd))
            channel_accept(a);
        if (ch->connected && ch->kind == CH_VPORT &&
            (ps_revents(&ps, ch_r, ch->rfd) & (POLLHUP | POLLERR)))
            channel_lost(a, "port hung up");
        else if (ch_r >= 0 && (ps_revents(&ps, ch_r, ch->rfd) & (POLLIN | POLLHUP | POLLERR)))
            channel_read(a);
        (void)ch_w;

        finish_sessions(a);
        int64_t t = now_mono_ms();
        if (buf_used(&a->host.outq) > 0 && sessions_settling(a, t)) {
            if (!hold_until)
                hold_until = t + SETTLE_MS;
            if (t < hold_until)
                continue;
        }
        hold_until = 0;
        channel_flush(a);
        if (a->boot_rest && a->hello_done && buf_used(&a->host.outq) == 0)
            finish_boot(a); /* the HELLO answer is out: the host is busy with it for a while */
    }
}
