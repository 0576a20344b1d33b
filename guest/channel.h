/* Opening the transport under the channel protocol: an inherited fd,
 * stdin/stdout, Unix sockets, AF_VSOCK, a virtio-serial port. */
#ifndef MA_CHANNEL_H
#define MA_CHANNEL_H

#include <stdbool.h>

enum channel_kind {
    CH_FD,      /* a connected stream (socketpair, --connect, --stdio) */
    CH_LISTEN,  /* a listening socket (Unix or vsock); one host at a time */
    CH_VPORT,   /* a virtio-serial port; POLLHUP = host away */
};

struct channel {
    enum channel_kind kind;
    int rfd, wfd;        /* the connection (-1 when none) */
    int listen_fd;       /* CH_LISTEN */
    bool connected;
    bool exit_on_eof;    /* agent --fd/--connect/--stdio */
};

int channel_use_fd(struct channel *ch, int fd);
int channel_use_stdio(struct channel *ch);
int channel_listen_unix(struct channel *ch, const char *path);
int channel_connect_unix(struct channel *ch, const char *path);
/* Listen on AF_VSOCK port (VMADDR_CID_ANY); retries up to wait_ms while
 * the vsock transport is not there yet. */
int channel_listen_vsock(struct channel *ch, unsigned port, int wait_ms);
/* Find /sys/class/virtio-ports/<vportXpY>/name == name and open the port,
 * waiting up to wait_ms for it to appear. */
int channel_open_vport(struct channel *ch, const char *name, int wait_ms);

#endif
