/* PID 1 only: the "network" object of the per-boot config disk.
 *
 *   {"interfaces": [{"name": "eth0", "address": "10.0.2.15", "prefix": 24,
 *                    "gateway": "10.0.2.2", "mtu": 1500,
 *                    "mac": "02:..:..:..:..:.."}],             (or {"name": "eth0", "dhcp": true})
 *    "dns": ["10.0.2.3"],
 *    "hosts": [{"address": "10.0.2.2", "names": ["host.microagent.internal"]}]}
 *
 * Everything is done with plain ioctls on one AF_INET datagram socket
 * (SIOCSIFMTU, SIOCSIFADDR, SIOCSIFNETMASK, SIOCSIFFLAGS, SIOCADDRT). An
 * interface with "dhcp": true (and no address, prefix or gateway) gets its
 * address, netmask, default route and nameservers from a DHCP server
 * (dhcp.c); those nameservers are used when "dns" is empty. "mac" (a unicast
 * address) is set before the interface comes up (SIOCSIFHWADDR): the host
 * gives each workspace its own, and a restored fork a new one (net_renew).
 *
 * Validation is per entry: an interface, dns or hosts entry with a missing
 * or mistyped field, or a value out of range, is logged and skipped as a
 * whole (a half-configured interface would hide the host's bug); the other
 * entries still apply. A "network" that is not an object means "no network"
 * (only lo). Unknown keys are ignored. Nothing here stops the boot. */
#define _GNU_SOURCE
#include "net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dhcp.h"
#include "json.h"
#include "util.h"

#define WAIT_IFACE_MS 5000
#define DHCP_MS 10000
#define HOSTS_PATH "/etc/hosts"
#define RESOLV_PATH "/etc/resolv.conf"

struct iface_cfg {
    char name[IFNAMSIZ];
    bool has_addr;
    struct in_addr addr;
    int prefix;
    bool has_gw;
    struct in_addr gw;
    int mtu; /* 0: leave alone */
    bool dhcp;
    bool has_mac;
    unsigned char mac[6];
};

/* Nameservers learnt by DHCP, for /etc/resolv.conf when the config has none. */
static struct in_addr dhcp_dns[DHCP_MAX_DNS];
static int dhcp_ndns;

/* A printable, bounded copy of untrusted text for log lines. */
static const char *printable(char *dst, size_t n, const char *s)
{
    size_t i = 0;
    for (; s && *s && i + 1 < n; s++)
        dst[i++] = (*s >= 0x20 && *s < 0x7f) ? *s : '?';
    dst[i] = 0;
    return dst;
}

static const char *jtype_name(const struct jv *v)
{
    if (!v)
        return "missing";
    if (v->type == J_STR && !jstr_clean(v))
        return "a string with a NUL byte";
    switch (v->type) {
    case J_NULL: return "null";
    case J_BOOL: return "a boolean";
    case J_INT: return "an integer";
    case J_NUM: return "a number";
    case J_STR: return "a string";
    case J_ARR: return "an array";
    case J_OBJ: return "an object";
    }
    return "?";
}

/* The kernel's dev_valid_name(): 1..15 bytes, not "." or "..", no '/', ':'
 * or whitespace. We also refuse control and non-ASCII bytes (the name ends
 * up in a /sys path and in log lines). */
static bool valid_ifname(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= IFNAMSIZ || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
        return false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p <= 0x20 || *p >= 0x7f || *p == '/' || *p == ':')
            return false;
    return true;
}

/* One whitespace-free token of /etc/hosts (a host name or alias): 1..253
 * printable ASCII bytes, no '#'. */
static bool valid_hostname_token(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 253)
        return false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p <= 0x20 || *p >= 0x7f || *p == '#')
            return false;
    return true;
}

/* An IPv4 or IPv6 literal (no scope suffix). */
static bool valid_ip(const char *s)
{
    unsigned char tmp[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, s, tmp) == 1 || inet_pton(AF_INET6, s, tmp) == 1;
}

/* ---- interfaces -------------------------------------------------------- */

static void ifr_init(struct ifreq *ifr, const char *name)
{
    memset(ifr, 0, sizeof *ifr);
    snprintf(ifr->ifr_name, IFNAMSIZ, "%s", name);
}

static int set_ipv4(int s, const char *name, struct in_addr addr, int prefix)
{
    struct ifreq ifr;
    ifr_init(&ifr, name);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
    sin->sin_family = AF_INET;
    sin->sin_addr = addr;
    if (ioctl(s, SIOCSIFADDR, &ifr) < 0 && errno != EEXIST) {
        ma_log("net: %s: setting address %s: %s", name, inet_ntoa(addr), strerror(errno));
        return -1;
    }
    ifr_init(&ifr, name);
    sin = (struct sockaddr_in *)&ifr.ifr_netmask;
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = prefix == 0 ? 0 : htonl(0xFFFFFFFFu << (32 - prefix));
    if (ioctl(s, SIOCSIFNETMASK, &ifr) < 0) {
        ma_log("net: %s: setting prefix /%d: %s", name, prefix, strerror(errno));
        return -1;
    }
    return 0;
}

static int set_up(int s, const char *name)
{
    struct ifreq ifr;
    ifr_init(&ifr, name);
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) {
        ma_log("net: %s: reading flags: %s", name, strerror(errno));
        return -1;
    }
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) {
        ma_log("net: %s: bringing up: %s", name, strerror(errno));
        return -1;
    }
    return 0;
}

static int set_mtu(int s, const char *name, int mtu)
{
    struct ifreq ifr;
    ifr_init(&ifr, name);
    ifr.ifr_mtu = mtu;
    if (ioctl(s, SIOCSIFMTU, &ifr) < 0) {
        ma_log("net: %s: setting mtu %d: %s", name, mtu, strerror(errno));
        return -1;
    }
    return 0;
}

static int add_default_route(int s, const char *name, struct in_addr gw)
{
    struct rtentry rt;
    memset(&rt, 0, sizeof rt);
    struct sockaddr_in *dst = (struct sockaddr_in *)&rt.rt_dst;
    struct sockaddr_in *mask = (struct sockaddr_in *)&rt.rt_genmask;
    struct sockaddr_in *via = (struct sockaddr_in *)&rt.rt_gateway;
    dst->sin_family = AF_INET;
    mask->sin_family = AF_INET;
    via->sin_family = AF_INET;
    via->sin_addr = gw;
    rt.rt_flags = RTF_UP | RTF_GATEWAY;
    char dev[IFNAMSIZ];
    snprintf(dev, sizeof dev, "%s", name);
    rt.rt_dev = dev;
    if (ioctl(s, SIOCADDRT, &rt) < 0) {
        ma_log("net: %s: default route via %s: %s", name, inet_ntoa(gw), strerror(errno));
        return -1;
    }
    return 0;
}

/* Up is enough: the kernel gives lo 127.0.0.1/8 (and ::1) as it comes up. */
static void loopback_up(int s)
{
    set_up(s, "lo");
}

static int hexdigit(char c)
{
    return c >= '0' && c <= '9' ? c - '0'
         : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* "xx:xx:xx:xx:xx:xx" (hex, either case) of a unicast, non-zero address. */
static bool parse_mac(const char *s, unsigned char out[6])
{
    if (strlen(s) != 17)
        return false;
    unsigned int any = 0;
    for (int i = 0; i < 6; i++) {
        int hi = hexdigit(s[3 * i]), lo = hexdigit(s[3 * i + 1]);
        if (hi < 0 || lo < 0 || (i < 5 && s[3 * i + 2] != ':'))
            return false;
        out[i] = (unsigned char)(hi << 4 | lo);
        any |= out[i];
    }
    return any != 0 && !(out[0] & 1);
}

static int set_mac(int s, const char *name, const unsigned char mac[6])
{
    struct ifreq ifr;
    ifr_init(&ifr, name);
    ifr.ifr_hwaddr.sa_family = 1; /* ARPHRD_ETHER */
    memcpy(ifr.ifr_hwaddr.sa_data, mac, 6);
    if (ioctl(s, SIOCSIFHWADDR, &ifr) < 0) {
        ma_log("net: %s: setting mac: %s", name, strerror(errno));
        return -1;
    }
    return 0;
}

static int set_down(int s, const char *name)
{
    struct ifreq ifr;
    ifr_init(&ifr, name);
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) {
        ma_log("net: %s: reading flags: %s", name, strerror(errno));
        return -1;
    }
    ifr.ifr_flags &= ~IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) {
        ma_log("net: %s: taking down: %s", name, strerror(errno));
        return -1;
    }
    return 0;
}

/* Read interfaces[idx] into out; false (logged) when it must be skipped. */
static bool parse_iface(const struct jv *v, size_t idx, struct iface_cfg *out)
{
    char show[64];
    memset(out, 0, sizeof *out);
    if (!v || v->type != J_OBJ) {
        ma_log("net: interfaces[%zu] is %s, not an object; skipped", idx, jtype_name(v));
        return false;
    }
    const char *name = NULL;
    if (jfield_str(v, "name", &name) != 1) {
        ma_log("net: interfaces[%zu]: \"name\" must be a string, got %s; skipped", idx,
               jtype_name(jget(v, "name")));
        return false;
    }
    if (!valid_ifname(name)) {
        ma_log("net: interfaces[%zu]: invalid interface name \"%s\" (1-%d bytes, no '/', ':' or "
               "spaces); skipped", idx, printable(show, sizeof show, name), IFNAMSIZ - 1);
        return false;
    }
    snprintf(out->name, sizeof out->name, "%s", name);

    int64_t mtu = 0;
    if (jfield_int(v, "mtu", 68, 65535, &mtu) < 0) {
        ma_log("net: %s: \"mtu\" must be an integer in 68..65535; interface skipped", out->name);
        return false;
    }
    out->mtu = (int)mtu;

    const char *mac = NULL;
    int rm = jfield_str(v, "mac", &mac);
    if (rm < 0 || (rm == 1 && !parse_mac(mac, out->mac))) {
        ma_log("net: %s: \"mac\" must be a unicast MAC address \"xx:xx:xx:xx:xx:xx\"; "
               "interface skipped", out->name);
        return false;
    }
    out->has_mac = rm == 1;

    bool dhcp = false;
    if (jfield_bool(v, "dhcp", &dhcp) < 0) {
        ma_log("net: %s: \"dhcp\" must be a boolean; interface skipped", out->name);
        return false;
    }
    out->dhcp = dhcp;
    if (dhcp) {
        if (jget(v, "address") || jget(v, "prefix") || jget(v, "gateway")) {
            ma_log("net: %s: \"dhcp\" excludes \"address\", \"prefix\" and \"gateway\"; "
                   "interface skipped", out->name);
            return false;
        }
        return true;
    }

    const char *addr = NULL, *gw = NULL;
    int ra = jfield_str(v, "address", &addr);
    if (ra < 0 || (ra == 1 && (inet_pton(AF_INET, addr, &out->addr) != 1 ||
                               out->addr.s_addr == htonl(INADDR_ANY)))) {
        ma_log("net: %s: \"address\" must be an IPv4 address string; interface skipped",
               out->name);
        return false;
    }
    out->has_addr = ra == 1;
    int64_t prefix = -1;
    int rp = jfield_int(v, "prefix", 0, 32, &prefix);
    if (rp < 0 || (out->has_addr && rp == 0)) {
        ma_log("net: %s: \"prefix\" must be an integer in 0..32%s; interface skipped", out->name,
               out->has_addr ? " (required with an address)" : "");
        return false;
    }
    out->prefix = (int)prefix;
    int rg = jfield_str(v, "gateway", &gw);
    if (rg < 0 || (rg == 1 && inet_pton(AF_INET, gw, &out->gw) != 1)) {
        ma_log("net: %s: \"gateway\" must be an IPv4 address string; interface skipped",
               out->name);
        return false;
    }
    out->has_gw = rg == 1;
    if (out->has_gw && !out->has_addr) {
        ma_log("net: %s: a \"gateway\" needs an \"address\"; interface skipped", out->name);
        return false;
    }
    return true;
}

static bool access_iface(const char *name)
{
    char path[64];
    snprintf(path, sizeof path, "/sys/class/net/%s", name);
    return access(path, F_OK) == 0;
}

static bool wait_iface(const char *name, int64_t deadline)
{
    char path[64];
    snprintf(path, sizeof path, "/sys/class/net/%s", name);
    return wait_for_path(path, deadline);
}

/* Bring the interface up, ask DHCP, apply address, netmask and route; false
 * (logged) when it got no address. */
static bool configure_dhcp(int s, const struct iface_cfg *c, bool *have_gw)
{
    struct dhcp_lease lease;
    if (set_up(s, c->name) < 0 || dhcp_acquire(c->name, now_mono_ms() + DHCP_MS, &lease) < 0) {
        ma_log("net: %s up without an address (DHCP failed)", c->name);
        return false;
    }
    int prefix = __builtin_popcount(ntohl(lease.mask.s_addr));
    char a[INET_ADDRSTRLEN], g[INET_ADDRSTRLEN] = "";
    inet_ntop(AF_INET, &lease.addr, a, sizeof a);
    if (set_ipv4(s, c->name, lease.addr, prefix) < 0)
        return false;
    if (lease.has_router && !*have_gw && add_default_route(s, c->name, lease.router) == 0) {
        *have_gw = true;
        inet_ntop(AF_INET, &lease.router, g, sizeof g);
    }
    for (int i = 0; i < lease.ndns && dhcp_ndns < DHCP_MAX_DNS; i++)
        dhcp_dns[dhcp_ndns++] = lease.dns[i];
    ma_log("net: %s up %s/%d%s%s (dhcp)", c->name, a, prefix, g[0] ? " via " : "", g);
    return true;
}

/* false when the interface is missing or a step failed (each logged) */
static bool configure_iface(int s, const struct iface_cfg *c, int64_t deadline, bool *have_gw)
{
    if (!wait_iface(c->name, deadline)) {
        ma_log("net: %s: no such interface (waited for /sys/class/net/%s); skipped", c->name,
               c->name);
        return false;
    }
    bool ok = true;
    if (c->mtu && set_mtu(s, c->name, c->mtu) < 0)
        ok = false;
    if (c->has_mac && set_mac(s, c->name, c->mac) < 0)
        ok = false;
    if (c->dhcp)
        return configure_dhcp(s, c, have_gw) && ok;
    bool addressed = c->has_addr && set_ipv4(s, c->name, c->addr, c->prefix) == 0;
    if (c->has_addr && !addressed)
        ok = false;
    if (set_up(s, c->name) < 0)
        return false;
    bool routed = false;
    if (c->has_gw) {
        if (*have_gw)
            ma_log("net: %s: a default route is already set; gateway %s ignored", c->name,
                   inet_ntoa(c->gw));
        else if (add_default_route(s, c->name, c->gw) == 0)
            *have_gw = routed = true;
        else
            ok = false;
    }
    char addr[INET_ADDRSTRLEN + 8] = "", gw[INET_ADDRSTRLEN + 8] = "", mac[24] = "";
    if (addressed) {
        char a[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &c->addr, a, sizeof a);
        snprintf(addr, sizeof addr, " %s/%d", a, c->prefix);
    }
    if (routed) {
        char g[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &c->gw, g, sizeof g);
        snprintf(gw, sizeof gw, " via %s", g);
    }
    if (c->has_mac)
        snprintf(mac, sizeof mac, " mac %02x:%02x:%02x:%02x:%02x:%02x", c->mac[0], c->mac[1],
                 c->mac[2], c->mac[3], c->mac[4], c->mac[5]);
    ma_log("net: %s up%s%s%s", c->name, addr, gw, mac);
    return ok;
}

/* The number of interfaces skipped or not fully configured. */
static int setup_interfaces(int s, const struct jv *list)
{
    if (!list || list->type == J_NULL)
        return 0;
    if (list->type != J_ARR) {
        ma_log("net: \"interfaces\" is %s, not an array; ignored", jtype_name(list));
        return 1;
    }
    /* One 5 s budget for all interfaces, so a config naming several missing
     * interfaces cannot hold the boot for 5 s each. */
    int64_t deadline = now_mono_ms() + WAIT_IFACE_MS;
    bool have_gw = false;
    int failed = 0;
    size_t idx = 0;
    for (const struct jv *v = list->child; v; v = v->next, idx++) {
        struct iface_cfg c;
        if (!parse_iface(v, idx, &c) || !configure_iface(s, &c, deadline, &have_gw))
            failed++;
    }
    return failed;
}

/* ---- files ------------------------------------------------------------- */

/* Replace path with a regular file holding text: write a temp file in the
 * same directory, rename over path. rename() replaces the directory entry
 * itself, so a symlink at path (resolv.conf often points into
 * /run/systemd/...) is replaced by a regular file, never followed.
 * No fsync: these files are written again at every boot, and
 * ext4 (auto_da_alloc) writes a file renamed over another out before the
 * rename commits, so a crash leaves the old file or the new one. An fsync
 * here cost a cold boot about 50 ms under TCG (a journal commit and a flush
 * that the host turns into an fdatasync). */
static int write_file_atomic(const char *path, const char *text, size_t len)
{
    char tmp[128];
    const char *slash = strrchr(path, '/');
    snprintf(tmp, sizeof tmp, "%.*s.%s.microagent-tmp", (int)(slash - path + 1), path, slash + 1);
    mkdir("/etc", 0755);
    unlink(tmp);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) {
        ma_log("net: writing %s: %s", path, strerror(errno));
        return -1;
    }
    fchmod(fd, 0644);
    const char *what = NULL;
    if (write_all_timeout(fd, text, len, 1000) < 0)
        what = "write";
    if (close(fd) < 0 && !what)
        what = "close";
    if (!what && rename(tmp, path) < 0)
        what = "rename";
    if (what) {
        ma_log("net: writing %s (%s): %s", path, what, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* Whether another process could be reading a file now. net.c runs in PID 1,
 * and every user process descends from PID 1 (orphans are re-parented to
 * it), so when PID 1 has no child at all, not even a zombie, none exists:
 * at boot, and after restoring a snapshot taken before any command ran. */
static bool others_may_read(void)
{
    siginfo_t si;
    return !(waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) < 0 && errno == ECHILD);
}

/* Replace path's content with text. With no other process to see a
 * half-written file, an ordinary file is rewritten in place: left alone when
 * it already holds text, else overwritten and cut to length. Under TCG that
 * cost a cold boot 12 ms where write_file_atomic's new inode, rename and
 * freed blocks cost 40 ms (55 ms after a restore). Only an ordinary file is
 * written through (O_NOFOLLOW, one link, regular, its blocks already holding
 * text's length, so a full disk cannot stop the write halfway), and it ends
 * as write_file_atomic's would: root's, 0644. Anything else, a failure, or
 * another process that may be reading goes to write_file_atomic, which
 * replaces the directory entry. A crash before writeback leaves a file the
 * next boot rewrites before anything reads it. */
static int write_file(const char *path, const char *text, size_t len)
{
    if (others_may_read())
        return write_file_atomic(path, text, len);
    int fd = open(path, O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1 ||
        (off_t)len > (off_t)st.st_blocks * 512) {
        if (fd >= 0)
            close(fd);
        return write_file_atomic(path, text, len);
    }
    char old[4096];
    bool same = (size_t)st.st_size == len && len <= sizeof old && pread(fd, old, len, 0) == (ssize_t)len &&
                memcmp(old, text, len) == 0;
    bool ok = same || (pwrite(fd, text, len, 0) == (ssize_t)len && ftruncate(fd, (off_t)len) == 0);
    /* what write_file_atomic's new file would be: root's, 0644 */
    if (ok && (st.st_uid != 0 || st.st_gid != 0))
        ok = fchown(fd, 0, 0) == 0;
    if (ok && (st.st_mode & 07777) != 0644)
        ok = fchmod(fd, 0644) == 0;
    if (close(fd) < 0)
        ok = false;
    return ok ? 0 : write_file_atomic(path, text, len);
}

/* The nameservers DHCP gave, when the config names none. */
static void write_dhcp_resolv_conf(void)
{
    struct buf b = { 0 };
    for (int i = 0; i < dhcp_ndns; i++)
        sb_printf(&b, "nameserver %s\n", inet_ntoa(dhcp_dns[i]));
    if (sb_cstr(&b))
        write_file(RESOLV_PATH, sb_cstr(&b), buf_used(&b));
    buf_free(&b);
}

static void write_resolv_conf(const struct jv *dns)
{
    if ((!dns || dns->type == J_NULL || (dns->type == J_ARR && dns->len == 0)) && dhcp_ndns > 0) {
        write_dhcp_resolv_conf();
        return;
    }
    if (!dns || dns->type == J_NULL)
        return;
    if (dns->type != J_ARR) {
        ma_log("net: \"dns\" is %s, not an array; /etc/resolv.conf left alone", jtype_name(dns));
        return;
    }
    if (dns->len == 0)
        return;
    struct buf b = { 0 };
    size_t idx = 0, good = 0;
    for (const struct jv *v = dns->child; v; v = v->next, idx++) {
        if (!jstr_clean(v) || !valid_ip(v->s)) {
            char show[64];
            ma_log("net: dns[%zu] (%s) is not an IP address string; skipped", idx,
                   v->type == J_STR ? printable(show, sizeof show, v->s) : jtype_name(v));
            continue;
        }
        sb_printf(&b, "nameserver %s\n", v->s);
        good++;
    }
    if (good == 0) {
        ma_log("net: no usable \"dns\" entry; /etc/resolv.conf left alone");
    } else if (!sb_cstr(&b)) {
        ma_log("net: /etc/resolv.conf: out of memory");
    } else {
        write_file(RESOLV_PATH, sb_cstr(&b), buf_used(&b));
    }
    buf_free(&b);
}

/* One hosts entry as "ADDRESS NAME..." appended to b; false (logged) when
 * the entry is skipped. */
static bool hosts_line(struct buf *b, const struct jv *v, size_t idx)
{
    char show[64];
    if (!v || v->type != J_OBJ) {
        ma_log("net: hosts[%zu] is %s, not an object; skipped", idx, jtype_name(v));
        return false;
    }
    const char *addr = NULL;
    if (jfield_str(v, "address", &addr) != 1 || !valid_ip(addr)) {
        ma_log("net: hosts[%zu]: \"address\" must be an IP address string; skipped", idx);
        return false;
    }
    const struct jv *names = jget(v, "names");
    if (!names || names->type != J_ARR || names->len == 0) {
        ma_log("net: hosts[%zu]: \"names\" must be a non-empty array of names; skipped", idx);
        return false;
    }
    for (const struct jv *n = names->child; n; n = n->next) {
        if (!jstr_clean(n) || !valid_hostname_token(n->s)) {
            ma_log("net: hosts[%zu]: invalid name %s%s%s; skipped", idx,
                   n->type == J_STR ? "\"" : "",
                   n->type == J_STR ? printable(show, sizeof show, n->s) : jtype_name(n),
                   n->type == J_STR ? "\"" : "");
            return false;
        }
    }
    sb_puts(b, addr);
    for (const struct jv *n = names->child; n; n = n->next) {
        sb_puts(b, " ");
        sb_puts(b, n->s);
    }
    sb_puts(b, "\n");
    return true;
}

static void write_hosts(const struct jv *hosts, const char *hostname)
{
    struct buf b = { 0 };
    sb_puts(&b, "127.0.0.1 localhost\n"
                "::1 localhost ip6-localhost ip6-loopback\n");
    if (hostname && valid_hostname_token(hostname)) {
        sb_printf(&b, "127.0.1.1 %s\n", hostname);
    } else {
        char show[64];
        ma_log("net: hostname \"%s\" cannot go into /etc/hosts; no 127.0.1.1 line",
               printable(show, sizeof show, hostname ? hostname : ""));
    }
    if (hosts && hosts->type == J_ARR) {
        size_t idx = 0;
        for (const struct jv *v = hosts->child; v; v = v->next, idx++)
            hosts_line(&b, v, idx);
    } else if (hosts && hosts->type != J_NULL) {
        ma_log("net: \"hosts\" is %s, not an array; ignored", jtype_name(hosts));
    }
    if (!sb_cstr(&b))
        ma_log("net: /etc/hosts: out of memory");
    else
        write_file(HOSTS_PATH, sb_cstr(&b), buf_used(&b));
    buf_free(&b);
}

/* ---- entry point ------------------------------------------------------- */

bool net_has_interfaces(const struct jv *network)
{
    const struct jv *list = network && network->type == J_OBJ ? jget(network, "interfaces") : NULL;
    return list && list->type == J_ARR && list->child;
}

void net_setup(const struct jv *network, const char *hostname)
{
    if (network && network->type == J_NULL)
        network = NULL;
    if (network && network->type != J_OBJ) {
        ma_log("net: \"network\" is %s, not an object; only lo is configured",
               jtype_name(network));
        network = NULL;
    }
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) {
        ma_log("net: socket: %s", strerror(errno));
    } else {
        loopback_up(s);
        if (network)
            setup_interfaces(s, jget(network, "interfaces"));
        close(s);
    }
    if (network)
        write_resolv_conf(jget(network, "dns"));
    write_hosts(network ? jget(network, "hosts") : NULL, hostname);
}

/* After a snapshot restore: every interface named is taken down first, which
 * drops the snapshot's routes and neighbour entries (the old gateway's MAC),
 * then configured as at boot with the new MAC and address; /etc/resolv.conf
 * and /etc/hosts are written again. */
int net_renew(const struct jv *network, const char *hostname)
{
    if (!network || network->type != J_OBJ) {
        ma_log("net: renew: \"network\" is %s, not an object", jtype_name(network));
        return -1;
    }
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) {
        ma_log("net: socket: %s", strerror(errno));
        return -1;
    }
    const struct jv *list = jget(network, "interfaces");
    int failed = 0;
    if (list && list->type == J_ARR) {
        size_t idx = 0;
        for (const struct jv *v = list->child; v; v = v->next, idx++) {
            struct iface_cfg c;
            if (parse_iface(v, idx, &c) && access_iface(c.name))
                set_down(s, c.name);
        }
    }
    failed += setup_interfaces(s, list);
    close(s);
    write_resolv_conf(jget(network, "dns"));
    write_hosts(jget(network, "hosts"), hostname);
    return failed ? -1 : 0;
}
