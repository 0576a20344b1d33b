#define _GNU_SOURCE
#include "channel.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "util.h"

/* musl has no <linux/vm_sockets.h>; the ABI is fixed. */
#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
#define VMADDR_CID_ANY 0xFFFFFFFFu
struct sockaddr_vm_compat {
    unsigned short svm_family;
    unsigned short svm_reserved1;
    unsigned int svm_port;
    unsigned int svm_cid;
    unsigned char svm_flags;
    unsigned char svm_zero[3];
};

int channel_use_fd(struct channel *ch, int fd)
{
    if (fcntl(fd, F_GETFD) < 0) {
        ma_log("--fd %d: %s", fd, strerror(errno));
        return -1;
    }
    set_cloexec(fd);
    set_nonblock(fd, true);
    ch->kind = CH_FD;
    ch->rfd = ch->wfd = fd;
    ch->connected = true;
    ch->exit_on_eof = true;
    return 0;
}

int channel_use_stdio(struct channel *ch)
{
    /* Keep the protocol off fd 1 for anything else: log to stderr only. */
    int in = fcntl(0, F_DUPFD_CLOEXEC, 3), out = fcntl(1, F_DUPFD_CLOEXEC, 3);
    if (in < 0 || out < 0) {
        ma_log("--stdio: %s", strerror(errno));
        return -1;
    }
    set_nonblock(in, true);
    set_nonblock(out, true);
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
        if (null > 2)
            close(null);
    }
    ch->kind = CH_FD;
    ch->rfd = in;
    ch->wfd = out;
    ch->connected = true;
    ch->exit_on_eof = true;
    return 0;
}

static int unix_addr(const char *path, struct sockaddr_un *sa)
{
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sa->sun_path) {
        ma_log("socket path too long: %s", path);
        return -1;
    }
    strcpy(sa->sun_path, path);
    return 0;
}

int channel_listen_unix(struct channel *ch, const char *path)
{
    struct sockaddr_un sa;
    if (unix_addr(path, &sa) < 0)
        return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 8) < 0) {
        ma_log("listen %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    ch->kind = CH_LISTEN;
    ch->listen_fd = fd;
    ch->connected = false;
    return 0;
}

int channel_connect_unix(struct channel *ch, const char *path)
{
    struct sockaddr_un sa;
    if (unix_addr(path, &sa) < 0)
        return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        ma_log("connect %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    return channel_use_fd(ch, fd);
}

int channel_listen_vsock(struct channel *ch, unsigned port, int wait_ms)
{
    int64_t deadline = now_mono_ms() + wait_ms;
    for (;;) {
        int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd >= 0) {
            struct sockaddr_vm_compat sa;
            memset(&sa, 0, sizeof sa);
            sa.svm_family = AF_VSOCK;
            sa.svm_port = port;
            sa.svm_cid = VMADDR_CID_ANY;
            if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(fd, 8) == 0) {
                ch->kind = CH_LISTEN;
                ch->listen_fd = fd;
                ch->connected = false;
                return 0;
            }
            int e = errno;
            close(fd);
            errno = e;
        }
        if (now_mono_ms() >= deadline) {
            ma_log("vsock port %u: %s", port, strerror(errno));
            return -1;
        }
        sleep_ms(50);
    }
}

static int find_vport(const char *name, char *dev, size_t devlen)
{
    DIR *d = opendir("/sys/class/virtio-ports");
    if (!d)
        return -1;
    struct dirent *e;
    int found = -1;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char p[512];
        snprintf(p, sizeof p, "/sys/class/virtio-ports/%s/name", e->d_name);
        char *v = read_small_file(p, 4096, NULL);
        if (!v)
            continue;
        v[strcspn(v, "\n")] = 0;
        if (strcmp(v, name) == 0) {
            snprintf(dev, devlen, "/dev/%s", e->d_name);
            found = 0;
        }
        free(v);
        if (found == 0)
            break;
    }
    closedir(d);
    return found;
}

int channel_open_vport(struct channel *ch, const char *name, int wait_ms)
{
    int64_t deadline = now_mono_ms() + wait_ms;
    char dev[300];
    for (;;) {
        if (find_vport(name, dev, sizeof dev) == 0) {
            int fd = open(dev, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
            if (fd >= 0) {
                ch->kind = CH_VPORT;
                ch->rfd = ch->wfd = fd;
                ch->connected = false; /* vport_check decides */
                return 0;
            }
        }
        if (now_mono_ms() >= deadline) {
            ma_log("virtio-serial port '%s' not found", name);
            return -1;
        }
        sleep_ms(50);
    }
}
