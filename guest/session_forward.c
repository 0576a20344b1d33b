/* forward sessions: a TCP connection inside the guest, spliced onto
 * streams 0 (host -> guest) and 1 (guest -> host). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "frame.h"
#include "session.h"

static void send_connected(struct session *s)
{
    struct buf b = { 0 };
    sb_puts(&b, "{\"connected\":true}");
    session_send_json(s, F_CONTROL, &b);
    buf_free(&b);
}

static int resolve(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    char h[256];
    snprintf(h, sizeof h, "%s", host);
    size_t hl = strlen(h);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        memmove(h, h + 1, hl - 2);
        h[hl - 2] = 0;
    }
    if (strcmp(h, "localhost") == 0)
        snprintf(h, sizeof h, "127.0.0.1");
    if (inet_pton(AF_INET, h, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)port);
        *len = sizeof *in4;
        return 0;
    }
    if (inet_pton(AF_INET6, h, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        *len = sizeof *in6;
        return 0;
    }
    /* A name: blocking resolver (/etc/hosts, DNS). Rare inside a guest. */
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *res = NULL;
    if (getaddrinfo(h, NULL, &hints, &res) != 0 || !res)
        return -1;
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    if (ss->ss_family == AF_INET)
        in4->sin_port = htons((uint16_t)port);
    else
        in6->sin6_port = htons((uint16_t)port);
    freeaddrinfo(res);
    return 0;
}

static void forward_open(struct session *s, const struct jv *req)
{
    int64_t port = 0;
    const char *host = "127.0.0.1";
    if (jfield_int(req, "port", 1, 65535, &port) != 1 || jfield_str(req, "host", &host) < 0) {
        session_fail(s, "bad_request", "forward needs an integer port in 1..65535 and a string host");
        return;
    }
    if (!*host)
        host = "127.0.0.1";
    char msg[512];
    struct sockaddr_storage ss;
    socklen_t sl;
    if (resolve(host, (int)port, &ss, &sl) < 0) {
        snprintf(msg, sizeof msg, "cannot resolve '%s'", host);
        session_fail(s, "connect_failed", msg);
        return;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(msg, sizeof msg, "socket: %s", strerror(errno));
        session_fail(s, "connect_failed", msg);
        return;
    }
    s->in_fd = fd;
    s->out_fd[1] = fd;
    s->out_used[1] = true;
    if (connect(fd, (struct sockaddr *)&ss, sl) == 0) {
        send_connected(s);
        return;
    }
    if (errno == EINPROGRESS) {
        s->connecting = true;
        return;
    }
    snprintf(msg, sizeof msg, "connect %s:%d: %s", host, (int)port, strerror(errno));
    session_fail(s, "connect_failed", msg);
}

static void forward_on_writable(struct session *s)
{
    if (!s->connecting) {
        session_flush_input(s);
        return;
    }
    int err = 0;
    socklen_t el = sizeof err;
    if (getsockopt(s->in_fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
        err = errno;
    if (err == EINPROGRESS || err == EALREADY)
        return;
    if (err) {
        char msg[256];
        snprintf(msg, sizeof msg, "connect: %s", strerror(err));
        session_fail(s, "connect_failed", msg);
        return;
    }
    s->connecting = false;
    send_connected(s);
    session_flush_input(s);
}

/* Half-close: the host's EOF becomes the connection's FIN. */
void forward_half_close(struct session *s)
{
    if (s->in_fd >= 0)
        shutdown(s->in_fd, SHUT_WR);
    session_close_in(s);
}

bool forward_finish(struct session *s)
{
    if (s->connecting || !s->out_eof_sent[1])
        return false;
    /* Both directions over; a reset connection ends both at once. */
    if (!s->in_closed && !s->out_error)
        return false;
    struct buf b = { 0 };
    sb_puts(&b, "{\"status\":\"ok\"}");
    session_exit(s, &b);
    return true;
}

/* One socket is both in_fd and out_fd[1]; connecting holds both until the
 * connection is made. */
const struct session_ops forward_session_ops = {
    .size = sizeof(struct session),
    .open = forward_open,
    .on_input_eof = forward_half_close,
    .on_writable = forward_on_writable,
    .maybe_finish = forward_finish,
};
