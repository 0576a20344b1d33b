/* PID 1 only: apply the "network" object of the per-boot config disk
 * (docs/protocol.md, "Boot parameters"): interfaces, default route,
 * /etc/resolv.conf, /etc/hosts; and always bring up lo. */
#ifndef MA_NET_H
#define MA_NET_H

#include <stdbool.h>

struct jv;

/* network: the config's "network" value, or NULL when there is none (no
 * config disk, or no such key). hostname: the final hostname, for the
 * 127.0.1.1 line of /etc/hosts. Every failure is logged as
 * "microagent-init: net: ..." and never stops the boot. */
void net_setup(const struct jv *network, const char *hostname);

/* Whether network names an interface: setting one up may wait seconds for
 * its device or a DHCP server, where lo and the files alone take
 * milliseconds. */
bool net_has_interfaces(const struct jv *network);

/* After a snapshot restore, apply network (same shape) again: each named
 * interface is taken down (dropping the snapshot's routes and neighbours),
 * then gets its new MAC, address and route; resolv.conf and hosts are
 * rewritten. -1 when an interface could not be configured (logged). */
int net_renew(const struct jv *network, const char *hostname);

#endif
