/* PID 1 only: a minimal DHCPv4 client (RFC 2131) for an interface whose
 * per-boot config says {"name": "eth0", "dhcp": true}.
 *
 * DISCOVER, OFFER, REQUEST, ACK on a plain UDP socket bound to port 68 of
 * that interface (SO_BINDTODEVICE), with the broadcast flag set so that the
 * server's replies reach us before we have an address. Each step waits up to
 * STEP_MS and is retried until the caller's deadline. The lease is applied
 * once and not renewed: the servers this serves (vmnet's NAT, QEMU's slirp,
 * pasta) hand out day-long leases on a private subnet, and a workspace that
 * outlives its lease keeps its address (logged at boot, documented). */
#define _GNU_SOURCE
#include "dhcp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "util.h"

#define STEP_MS 1500
#define BOOTP_FIXED 236
#define MAGIC 0x63825363u
#define PKT_MAX 576

enum { DISCOVER = 1, OFFER = 2, REQUEST = 3, ACK = 5, NAK = 6 };

struct reply {
    int type;
    struct in_addr yiaddr, server;
    struct dhcp_lease lease;
};

static size_t build(uint8_t *p, uint32_t xid, const uint8_t mac[6], int type,
                    const struct reply *offer)
{
    memset(p, 0, PKT_MAX);
    p[0] = 1; /* BOOTREQUEST */
    p[1] = 1; /* ethernet */
    p[2] = 6;
    memcpy(p + 4, &xid, 4);
    p[10] = 0x80; /* flags: broadcast */
    memcpy(p + 28, mac, 6);
    uint32_t magic = htonl(MAGIC);
    memcpy(p + BOOTP_FIXED, &magic, 4);
    size_t n = BOOTP_FIXED + 4;
    p[n++] = 53, p[n++] = 1, p[n++] = (uint8_t)type;
    p[n++] = 55, p[n++] = 3, p[n++] = 1, p[n++] = 3, p[n++] = 6; /* mask, router, dns */
    if (offer) {
        p[n++] = 50, p[n++] = 4;
        memcpy(p + n, &offer->yiaddr, 4), n += 4;
        p[n++] = 54, p[n++] = 4;
        memcpy(p + n, &offer->server, 4), n += 4;
    }
    p[n++] = 255;
    return n < 300 ? 300 : n; /* BOOTP's minimum; some servers want it */
}

/* Parse a BOOTREPLY for xid/mac; false when it is not ours or malformed. */
static bool parse(const uint8_t *p, size_t len, uint32_t xid, const uint8_t mac[6],
                  struct reply *r)
{
    uint32_t magic;
    if (len < BOOTP_FIXED + 4 || p[0] != 2 || memcmp(p + 4, &xid, 4) != 0 ||
        memcmp(p + 28, mac, 6) != 0)
        return false;
    memcpy(&magic, p + BOOTP_FIXED, 4);
    if (ntohl(magic) != MAGIC)
        return false;
    memset(r, 0, sizeof *r);
    memcpy(&r->yiaddr, p + 16, 4);
    for (size_t i = BOOTP_FIXED + 4; i < len;) {
        uint8_t code = p[i++];
        if (code == 0)
            continue;
        if (code == 255 || i >= len)
            break;
        uint8_t olen = p[i++];
        if (i + olen > len)
            return false;
        const uint8_t *v = p + i;
        if (code == 53 && olen == 1)
            r->type = v[0];
        else if (code == 54 && olen == 4)
            memcpy(&r->server, v, 4);
        else if (code == 1 && olen == 4)
            memcpy(&r->lease.mask, v, 4), r->lease.has_mask = true;
        else if (code == 3 && olen >= 4)
            memcpy(&r->lease.router, v, 4), r->lease.has_router = true;
        else if (code == 6)
            for (int k = 0; k + 4 <= olen && r->lease.ndns < DHCP_MAX_DNS; k += 4)
                memcpy(&r->lease.dns[r->lease.ndns++], v + k, 4);
        i += olen;
    }
    r->lease.addr = r->yiaddr;
    return r->type != 0;
}

/* Send `type` and wait for a reply of one of the wanted types; 0 or -1. */
static int exchange(int s, uint32_t xid, const uint8_t mac[6], int type, const struct reply *offer,
                    int want1, int want2, struct reply *out, int64_t deadline)
{
    uint8_t pkt[PKT_MAX];
    size_t n = build(pkt, xid, mac, type, offer);
    struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(67),
                              .sin_addr.s_addr = htonl(INADDR_BROADCAST) };
    while (now_mono_ms() < deadline) {
        if (sendto(s, pkt, n, 0, (struct sockaddr *)&to, sizeof to) < 0)
            ma_log("dhcp: send: %s", strerror(errno));
        int64_t step_end = now_mono_ms() + STEP_MS;
        if (step_end > deadline)
            step_end = deadline;
        for (int64_t now = now_mono_ms(); now < step_end; now = now_mono_ms()) {
            struct pollfd pfd = { .fd = s, .events = POLLIN };
            if (poll(&pfd, 1, (int)(step_end - now)) <= 0)
                continue;
            uint8_t in[1500];
            ssize_t got = recv(s, in, sizeof in, 0);
            if (got > 0 && parse(in, (size_t)got, xid, mac, out) &&
                (out->type == want1 || out->type == want2))
                return 0;
        }
    }
    return -1;
}

static int open_socket(const char *ifname, uint8_t mac[6])
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifname);
    int one = 1;
    struct sockaddr_in me = { .sin_family = AF_INET, .sin_port = htons(68) };
    if (ioctl(s, SIOCGIFHWADDR, &ifr) < 0 ||
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        setsockopt(s, SOL_SOCKET, SO_BROADCAST, &one, sizeof one) < 0 ||
        setsockopt(s, SOL_SOCKET, SO_BINDTODEVICE, ifname, (socklen_t)strlen(ifname) + 1) < 0 ||
        bind(s, (struct sockaddr *)&me, sizeof me) < 0) {
        ma_log("dhcp: %s: socket setup: %s", ifname, strerror(errno));
        close(s);
        return -1;
    }
    memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
    return s;
}

int dhcp_acquire(const char *ifname, int64_t deadline, struct dhcp_lease *out)
{
    uint8_t mac[6];
    int s = open_socket(ifname, mac);
    if (s < 0)
        return -1;
    uint32_t xid;
    if (getrandom(&xid, sizeof xid, GRND_NONBLOCK) != sizeof xid)
        xid = (uint32_t)now_mono_ms() ^ (uint32_t)getpid();
    struct reply offer, ack;
    int rc = -1;
    if (exchange(s, xid, mac, DISCOVER, NULL, OFFER, OFFER, &offer, deadline) < 0) {
        ma_log("dhcp: %s: no offer before the deadline", ifname);
    } else if (exchange(s, xid, mac, REQUEST, &offer, ACK, NAK, &ack, deadline) < 0) {
        ma_log("dhcp: %s: no answer to the request before the deadline", ifname);
    } else if (ack.type == NAK) {
        ma_log("dhcp: %s: the server refused the offered address (NAK)", ifname);
    } else if (ack.yiaddr.s_addr == 0 || !ack.lease.has_mask) {
        ma_log("dhcp: %s: the ACK carries no address or netmask", ifname);
    } else {
        *out = ack.lease;
        rc = 0;
    }
    close(s);
    return rc;
}
