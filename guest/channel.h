/* Opening the transport under the channel protocol: an inherited fd,
 * stdin/stdout, Unix sockets, AF_VSOCK, a virtio-serial port. */
#ifndef MA_CHANNEL_H
#define MA_CHANNEL_H

#include "agent.h"

int channel_use_fd(struct agent *a, int fd);
int channel_use_stdio(struct agent *a);
int channel_listen_unix(struct agent *a, const char *path);
int channel_connect_unix(struct agent *a, const char *path);
/* Listen on AF_VSOCK port (VMADDR_CID_ANY); retries up to wait_ms while
 * the vsock transport is not there yet. */
int channel_listen_vsock(struct agent *a, unsigned port, int wait_ms);
/* Find /sys/class/virtio-ports/<vportXpY>/name == name and open the port,
 * waiting up to wait_ms for it to appear. */
int channel_open_vport(struct agent *a, const char *name, int wait_ms);

#endif
