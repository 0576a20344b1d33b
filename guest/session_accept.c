/* accept sessions: the reverse of forward. The host opens one ahead of
 * time; it waits on a listener on 127.0.0.1:port inside the guest, takes
 * the next connection and becomes a spliced socket exactly like a forward
 * (stream 0 host -> guest, stream 1 guest -> host). The host's egress proxy
 * keeps a few open, so guest processes reach it through a port of their own
 * loopback with no NIC at all. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "frame.h"
#include "session.h"

/* Connections the kernel queues while no accept session waits. */
#define ACCEPT_BACKLOG 64

/* One listener for the guest's lifetime: it outlives sessions and host
 * reconnects, so a connection is never refused between two accepts. */
static int g_listen_fd = -1;
static int g_listen_port;

int accept_listen(int port)
{
    if (g_listen_fd >= 0)
        return g_listen_port == port ? 0 : (errno = EADDRINUSE, -1);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sin, sizeof sin) < 0 || listen(fd, ACCEPT_BACKLOG) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    g_listen_fd = fd;
    g_listen_port = port;
    return 0;
}

static void accept_open(struct session *s, const struct jv *req)
{
    int64_t port = 0;
    if (jfield_int(req, "port", 1, 65535, &port) != 1) {
        session_fail(s, "bad_request", "accept needs an integer port in 1..65535");
        return;
    }
    if (accept_listen((int)port) < 0) {
        char msg[128];
        snprintf(msg, sizeof msg, "listen 127.0.0.1:%d: %s", (int)port, strerror(errno));
        session_fail(s, "listen_failed", msg);
    }
}

/* out_used[1] marks the connection taken: in_fd alone goes back to -1
 * once the host's EOF half-closes it, and the session must not then take
 * the next connection into its finished stream. */
static int accept_wait_fd(const struct session *s)
{
    return s->out_used[1] ? -1 : g_listen_fd;
}

static void accept_ready(struct session *s)
{
    if (s->out_used[1])
        return;
    struct sockaddr_in peer;
    socklen_t pl = sizeof peer;
    int fd = accept4(g_listen_fd, (struct sockaddr *)&peer, &pl, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        return; /* another waiting session took it, or it went away: keep waiting */
    s->in_fd = fd;
    s->out_fd[1] = fd;
    s->out_used[1] = true;
    struct buf b = { 0 };
    sb_printf(&b, "{\"accepted\":{\"port\":%d}}", (int)ntohs(peer.sin_port));
    session_send_json(s, F_CONTROL, &b);
    buf_free(&b);
    /* Bytes the host sent ahead (none from a conforming host) go out now. */
    if (buf_used(&s->inbuf) > 0)
        session_flush_input(s);
}

/* Until a connection is taken the session has no fd; then it is a forward. */
const struct session_ops accept_session_ops = {
    .size = sizeof(struct session),
    .open = accept_open,
    .on_input_eof = forward_half_close,
    .maybe_finish = forward_finish,
    .wait_fd = accept_wait_fd,
    .on_wait_ready = accept_ready,
};
