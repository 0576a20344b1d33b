/* PID 1 only: a minimal DHCPv4 client for {"dhcp": true} interfaces. */
#ifndef MA_DHCP_H
#define MA_DHCP_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>

#define DHCP_MAX_DNS 3

struct dhcp_lease {
    struct in_addr addr;
    bool has_mask;
    struct in_addr mask;
    bool has_router;
    struct in_addr router;
    int ndns;
    struct in_addr dns[DHCP_MAX_DNS];
};

/* Acquire a lease on the (up) interface ifname before deadline (monotonic
 * ms, util.h's now_mono_ms); 0 and *out filled, or -1 (logged). */
int dhcp_acquire(const char *ifname, int64_t deadline, struct dhcp_lease *out);

#endif
