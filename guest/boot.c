/* PID-1 duties: console, initramfs stage (modules, root mount, switch root
 * in-process), system mounts, hostname, per-boot config, network (net.c),
 * the channel; then the agent loop, and the power-off it asks for. PID 1
 * must never exit. */
#define _GNU_SOURCE
#include "boot.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "agent.h"
#include "channel.h"
#include "json.h"
#include "mounts.h"
#include "net.h"
#include "service.h"

#ifndef SYS_finit_module
#define SYS_finit_module 313
#endif
#define MODULE_INIT_COMPRESSED_FILE_FLAG 4
#define RAMFS_MAGIC_ 0x858458f6
#define TMPFS_MAGIC_ 0x01021994
#define WAIT_DEVICE_MS 10000

struct boot_config {
    char root[256];
    char rootfstype[64];
    char channel[256];
    char hostname[256];
    char config[256];
    enum shutdown_action poweroff_means;
};

static struct boot_config g_cfg = {
    .root = "/dev/vda",
    .rootfstype = "ext4",
    .channel = "virtio-serial:microagent.channel",
    .hostname = "microagent",
    .config = "",
    .poweroff_means = SD_POWEROFF,
};

static void __attribute__((noreturn)) pid1_poweroff(enum shutdown_action how)
{
    sync();
    mounts_release(); /* volumes clean, for the next workspace that mounts them */
    mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL);
    sync();
    reboot(how == SD_REBOOT ? RB_AUTOBOOT : RB_POWER_OFF);
    ma_log("reboot: %s", strerror(errno));
    for (;;)
        pause();
}

static void __attribute__((noreturn)) fatal(const char *fmt, const char *arg)
{
    char msg[512];
    snprintf(msg, sizeof msg, fmt, arg, arg ? strerror(errno) : "");
    ma_log("fatal: %s", msg);
    sleep_ms(100);
    pid1_poweroff(g_cfg.poweroff_means);
}

/* ---- console and mounts ------------------------------------------------ */

static void open_console(void)
{
    if (fcntl(1, F_GETFD) >= 0 && fcntl(2, F_GETFD) >= 0)
        return;
    int fd = open("/dev/console", O_RDWR | O_NOCTTY);
    if (fd < 0) {
        mkdir("/dev", 0755);
        mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
        fd = open("/dev/console", O_RDWR | O_NOCTTY);
    }
    if (fd < 0)
        return;
    for (int i = 0; i < 3; i++)
        if (fcntl(i, F_GETFD) < 0 || i > 0)
            dup2(fd, i);
    if (fd > 2)
        close(fd);
}

static bool is_mountpoint(const char *path)
{
    struct stat a, b;
    char parent[512];
    snprintf(parent, sizeof parent, "%s/..", path);
    if (stat(path, &a) < 0 || stat(parent, &b) < 0)
        return false;
    return a.st_dev != b.st_dev || a.st_ino == b.st_ino;
}

static int mount_fs(const char *src, const char *target, const char *type, unsigned long flags,
                    const char *data)
{
    if (mkdir(target, 0755) < 0 && errno != EEXIST) {
        ma_log("mkdir %s: %s", target, strerror(errno));
        return -1;
    }
    if (is_mountpoint(target))
        return 0;
    if (mount(src, target, type, flags, data) < 0) {
        ma_log("mount %s on %s: %s", type, target, strerror(errno));
        return -1;
    }
    return 0;
}

/* ---- kernel command line ----------------------------------------------- */

static void set_field(char *dst, size_t n, const char *v)
{
    if (strlen(v) < n)
        snprintf(dst, n, "%s", v);
    else
        ma_log("ignoring an over-long boot parameter");
}

static void parse_cmdline(struct boot_config *c)
{
    char *text = read_small_file("/proc/cmdline", 64 * 1024, NULL);
    if (!text) {
        ma_log("cannot read /proc/cmdline: %s", strerror(errno));
        return;
    }
    char *save = NULL;
    for (char *tok = strtok_r(text, " \t\n", &save); tok; tok = strtok_r(NULL, " \t\n", &save)) {
        char *eq = strchr(tok, '=');
        if (!eq || strncmp(tok, "microagent.", 11) != 0)
            continue;
        *eq = 0;
        const char *k = tok + 11, *v = eq + 1;
        if (strcmp(k, "root") == 0)
            set_field(c->root, sizeof c->root, v);
        else if (strcmp(k, "rootfstype") == 0)
            set_field(c->rootfstype, sizeof c->rootfstype, v);
        else if (strcmp(k, "channel") == 0)
            set_field(c->channel, sizeof c->channel, v);
        else if (strcmp(k, "hostname") == 0)
            set_field(c->hostname, sizeof c->hostname, v);
        else if (strcmp(k, "config") == 0)
            set_field(c->config, sizeof c->config, v);
        else if (strcmp(k, "shutdown") == 0)
            c->poweroff_means = strcmp(v, "reboot") == 0 ? SD_REBOOT : SD_POWEROFF;
    }
    free(text);
}

/* ---- initramfs stage --------------------------------------------------- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool has_suffix(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

/* The virtio device IDs the guest has (/sys/bus/virtio/devices/N/device
 * holds "0x0001" for a net device): the bus drivers (virtio_mmio,
 * virtio_pci) register every device when they load, driver or not. */
#define MAX_VIRTIO_ID 256
static void virtio_devices_present(bool present[MAX_VIRTIO_ID])
{
    memset(present, 0, MAX_VIRTIO_ID * sizeof *present);
    DIR *d = opendir("/sys/bus/virtio/devices");
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[512];
        snprintf(path, sizeof path, "/sys/bus/virtio/devices/%s/device", e->d_name);
        size_t len = 0;
        char *text = read_small_file(path, 64, &len);
        if (!text)
            continue;
        unsigned long id = strtoul(text, NULL, 16);
        if (id < MAX_VIRTIO_ID)
            present[id] = true;
        free(text);
    }
    closedir(d);
}

/* Whether the module file `name` is wanted: the host's <dir>/conditions has
 * a line "NAME ID..." (virtio device IDs in hex) for each module that only
 * drives, or only serves drivers of, those devices; a module without a line
 * is always loaded. */
static bool module_wanted(const char *conditions, const char *name, const bool present[MAX_VIRTIO_ID])
{
    size_t nlen = strlen(name);
    for (const char *line = conditions; line && *line;) {
        const char *eol = strchr(line, '\n');
        const char *next = eol ? eol + 1 : line + strlen(line);
        if (strncmp(line, name, nlen) == 0 && line[nlen] == ' ') {
            for (const char *p = line + nlen;;) {
                while (*p == ' ')
                    p++;
                if (!isxdigit((unsigned char)*p)) /* the line's end: strtoul would read on */
                    break;
                char *end;
                unsigned long id = strtoul(p, &end, 16);
                if (id < MAX_VIRTIO_ID && present[id])
                    return true;
                p = end;
            }
            return false;
        }
        line = next;
    }
    return true;
}

/* finit_module every file in names[] whose want[] is set, in order. A module
 * whose dependencies are not loaded yet fails with ENOENT; it is retried
 * after the others. */
static void load_in_order(const char *dir, char **names, size_t n, const bool *want)
{
    int *err = calloc(n, sizeof *err);
    bool *done = calloc(n, sizeof *done);
    if (!err || !done) {
        free(err);
        free(done);
        return;
    }
    for (size_t i = 0; i < n; i++)
        done[i] = !want[i];
    for (int pass = 0; pass < 8; pass++) {
        bool progress = false, pending = false;
        for (size_t i = 0; i < n; i++) {
            if (done[i])
                continue;
            char path[512];
            snprintf(path, sizeof path, "%s/%s", dir, names[i]);
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) {
                err[i] = errno;
                done[i] = true;
                ma_log("module %s: %s", names[i], strerror(err[i]));
                continue;
            }
            int flags = (has_suffix(names[i], ".xz") || has_suffix(names[i], ".gz") ||
                         has_suffix(names[i], ".zst"))
                            ? MODULE_INIT_COMPRESSED_FILE_FLAG
                            : 0;
            long r = syscall(SYS_finit_module, fd, "", flags);
            err[i] = r < 0 ? errno : 0;
            close(fd);
            if (r == 0 || err[i] == EEXIST) {
                done[i] = true;
                progress = true;
            } else {
                pending = true;
            }
        }
        if (!pending || !progress)
            break;
    }
    for (size_t i = 0; i < n; i++)
        if (!done[i])
            ma_log("module %s: %s", names[i], strerror(err[i]));
    free(err);
    free(done);
}

static bool is_module_file(const char *name)
{
    return has_suffix(name, ".ko") || has_suffix(name, ".ko.xz") || has_suffix(name, ".ko.gz") ||
           has_suffix(name, ".ko.zst");
}

/* Load the modules in dir in filename order: first every module the host
 * marked unconditional (the virtio bus drivers among them), then those for
 * the virtio devices this VM has. Under TCG each module costs a cold boot
 * 10-50 ms, and a VM without a network, vsock or virtiofs device needs none
 * of their drivers. */
static void load_modules(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !is_module_file(e->d_name))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 32;
            char **nn = realloc(names, cap * sizeof *nn);
            if (!nn)
                break;
            names = nn;
        }
        names[n] = strdup(e->d_name);
        if (names[n])
            n++;
    }
    closedir(d);
    if (n == 0) { /* a kernel with its drivers built in */
        free(names);
        return;
    }
    qsort(names, n, sizeof *names, cmp_str);
    char path[512];
    snprintf(path, sizeof path, "%s/conditions", dir);
    size_t clen = 0;
    char *conditions = read_small_file(path, 1 << 16, &clen);
    static bool present[MAX_VIRTIO_ID];
    bool *always = calloc(n, sizeof *always), *later = calloc(n, sizeof *later);
    if (always && later) {
        bool none_present[MAX_VIRTIO_ID] = { false };
        for (size_t i = 0; i < n; i++)
            always[i] = module_wanted(conditions, names[i], none_present);
        load_in_order(dir, names, n, always);
        virtio_devices_present(present);
        for (size_t i = 0; i < n; i++)
            later[i] = !always[i] && module_wanted(conditions, names[i], present);
        load_in_order(dir, names, n, later);
    }
    free(always);
    free(later);
    free(conditions);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* Delete everything under dirfd that lives on device dev (the initramfs),
 * leaving mount points alone. */
static void delete_tree(int dirfd, dev_t dev, int depth)
{
    if (depth > 64)
        return;
    DIR *d = fdopendir(dirfd);
    if (!d) {
        close(dirfd);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (depth == 0 && strcmp(e->d_name, "newroot") == 0)
            continue;
        struct stat st;
        if (fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || st.st_dev != dev)
            continue;
        if (S_ISDIR(st.st_mode)) {
            int sub = openat(dirfd, e->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
            if (sub >= 0) {
                struct stat sst;
                if (fstat(sub, &sst) == 0 && sst.st_dev == dev) {
                    delete_tree(sub, dev, depth + 1);
                    unlinkat(dirfd, e->d_name, AT_REMOVEDIR);
                } else {
                    close(sub);
                }
            }
        } else {
            unlinkat(dirfd, e->d_name, 0);
        }
    }
    closedir(d);
}

/* The initramfs, once the root disk replaced it: its files are freed late
 * (boot_rest), through a descriptor kept from before the switch. */
static int g_initramfs_fd = -1;
static dev_t g_initramfs_dev;

static void keep_initramfs(void)
{
    struct statfs sfs;
    struct stat st;
    if (statfs("/", &sfs) < 0 || stat("/", &st) < 0)
        return;
    if ((unsigned long)sfs.f_type != RAMFS_MAGIC_ && (unsigned long)sfs.f_type != TMPFS_MAGIC_) {
        ma_log("not deleting the initramfs: / is not ramfs/tmpfs");
        return;
    }
    g_initramfs_fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    g_initramfs_dev = st.st_dev;
}

static void free_initramfs(void)
{
    if (g_initramfs_fd >= 0)
        delete_tree(g_initramfs_fd, g_initramfs_dev, 0); /* closes it */
    g_initramfs_fd = -1;
}

static void move_mount_to(const char *from, const char *to)
{
    if (!is_mountpoint(from))
        return;
    mkdir(to, 0755);
    if (mount(from, to, NULL, MS_MOVE, NULL) < 0) {
        ma_log("moving %s to %s: %s", from, to, strerror(errno));
        umount2(from, MNT_DETACH);
    }
}

static void initramfs_stage(void)
{
    mount_fs("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    open_console();
    mount_fs("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount_fs("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    load_modules("/modules");
    parse_cmdline(&g_cfg);

    if (!wait_for_path(g_cfg.root, now_mono_ms() + WAIT_DEVICE_MS)) {
        errno = ENOENT;
        fatal("root device %s did not appear: %s", g_cfg.root);
    }
    mkdir("/newroot", 0755);
    if (mount(g_cfg.root, "/newroot", g_cfg.rootfstype, 0, NULL) < 0)
        fatal("mounting the root device %s: %s", g_cfg.root);

    keep_initramfs();
    move_mount_to("/dev", "/newroot/dev");
    move_mount_to("/proc", "/newroot/proc");
    move_mount_to("/sys", "/newroot/sys");
    if (chdir("/newroot") < 0)
        fatal("chdir %s: %s", "/newroot");
    if (mount(".", "/", NULL, MS_MOVE, NULL) < 0)
        fatal("moving %s to /: %s", "/newroot");
    if (chroot(".") < 0)
        fatal("chroot %s: %s", "/newroot");
    if (chdir("/") < 0)
        fatal("chdir %s: %s", "/");
}

/* ---- system setup ------------------------------------------------------ */

static void system_mounts(void)
{
    mount_fs("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount_fs("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount_fs("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    if (mount_fs("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
                 "newinstance,ptmxmode=0666,mode=0620,gid=5") < 0)
        mount_fs("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666");
    struct stat st;
    if (lstat("/dev/ptmx", &st) < 0 || !(S_ISCHR(st.st_mode) || S_ISLNK(st.st_mode))) {
        unlink("/dev/ptmx");
        if (symlink("pts/ptmx", "/dev/ptmx") < 0)
            ma_log("/dev/ptmx: %s", strerror(errno));
    } else if (S_ISCHR(st.st_mode)) {
        chmod("/dev/ptmx", 0666);
    }
    mount_fs("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
    mount_fs("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
    if (mkdir("/tmp", 01777) == 0)
        chmod("/tmp", 01777);
    symlink("/proc/self/fd", "/dev/fd");
    symlink("/proc/self/fd/0", "/dev/stdin");
    symlink("/proc/self/fd/1", "/dev/stdout");
    symlink("/proc/self/fd/2", "/dev/stderr");
}

static void set_hostname(const char *name)
{
    if (*name && sethostname(name, strlen(name)) < 0)
        ma_log("sethostname %s: %s", name, strerror(errno));
}

/* The per-boot config disk: one JSON object, then NUL padding. Applies
 * hostname and env; on success doc holds the parsed config (for "network")
 * and the returned text must be freed after json_free(doc). */
static char *read_boot_config(struct agent *a, struct jdoc *doc)
{
    if (!g_cfg.config[0])
        return NULL;
    if (!wait_for_path(g_cfg.config, now_mono_ms() + WAIT_DEVICE_MS)) {
        ma_log("config device %s did not appear", g_cfg.config);
        return NULL;
    }
    size_t len = 0;
    char *text = read_small_file(g_cfg.config, 1 << 20, &len);
    if (!text) {
        ma_log("reading config %s: %s", g_cfg.config, strerror(errno));
        return NULL;
    }
    len = strnlen(text, len);
    if (json_parse(text, len, doc) < 0) {
        ma_log("config %s is not a JSON object; ignored", g_cfg.config);
        free(text);
        return NULL;
    }
    const char *hn = NULL;
    if (jfield_str(doc->root, "hostname", &hn) == 1 && *hn)
        set_field(g_cfg.hostname, sizeof g_cfg.hostname, hn);
    const char **env = NULL;
    size_t n = 0;
    if (jfield_strv(doc->root, "env", &env, &n) == 1) {
        struct session_host *h = &a->host;
        h->boot_env = calloc(n + 1, sizeof *h->boot_env);
        for (size_t i = 0; h->boot_env && i < n; i++) {
            if (!strchr(env[i], '=') || env[i][0] == '=')
                continue;
            char *dup = strdup(env[i]);
            if (dup)
                h->boot_env[h->n_boot_env++] = dup;
        }
        free(env);
    }
    return text;
}

/* "proxy": {"port": N}: the egress proxy's port on the guest's loopback,
 * listening before any process starts (docs/egress.md). */
static void listen_proxy(const struct jv *proxy)
{
    int64_t port = 0;
    if (!proxy || jfield_int(proxy, "port", 1, 65535, &port) != 1)
        return;
    if (accept_listen((int)port) < 0)
        ma_log("proxy: listen 127.0.0.1:%d: %s", (int)port, strerror(errno));
}

static int open_channel(struct agent *a)
{
    const char *spec = g_cfg.channel;
    if (strncmp(spec, "virtio-serial:", 14) == 0)
        return channel_open_vport(&a->ch, spec + 14, WAIT_DEVICE_MS);
    if (strncmp(spec, "vsock:", 6) == 0) {
        char *end;
        unsigned long port = strtoul(spec + 6, &end, 10);
        if (*end || port == 0 || port > 0xFFFFFFFEul) {
            ma_log("bad vsock port in microagent.channel=%s", spec);
            return -1;
        }
        return channel_listen_vsock(&a->ch, (unsigned)port, WAIT_DEVICE_MS);
    }
    ma_log("unknown microagent.channel=%s", spec);
    return -1;
}

/* The config disk's document, until boot_rest is done with it. */
static struct jdoc g_boot_doc;
static char *g_boot_text;

/* The boot's steps no request may overtake but the host need not wait for
 * when they are quick (no interface to set up: lo, /etc/hosts, the proxy's
 * listener, the service, the initramfs freed): the agent runs them right
 * after its first HELLO answer has left, while the host reacts to it (about
 * 20 ms under emulation), and before it reads any other frame, so every
 * request still finds the boot finished. */
static void boot_rest(struct agent *a)
{
    const struct jv *root = g_boot_doc.root;
    net_setup(root ? jget(root, "network") : NULL, g_cfg.hostname);
    listen_proxy(root ? jget(root, "proxy") : NULL);
    service_configure(root ? jget(root, "service") : NULL, &a->host);
    json_free(&g_boot_doc);
    free(g_boot_text);
    g_boot_text = NULL;
    free_initramfs();
}

void pid1_main(void)
{
    static struct agent agent;
    umask(022);
    if (chdir("/") < 0) {
        /* nothing to do about it */
    }
    open_console();
    if (access("/microagent-initramfs", F_OK) == 0) {
        initramfs_stage();
    } else {
        mount_fs("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
        parse_cmdline(&g_cfg);
    }
    system_mounts();
    open_console();
    if (agent_init(&agent, true) < 0)
        fatal("agent setup: %s%s", "");
    agent.poweroff_means = g_cfg.poweroff_means;
    struct jdoc cfg_doc = { 0 };
    char *cfg_text = read_boot_config(&agent, &cfg_doc);
    set_hostname(g_cfg.hostname);
    if (mounts_apply(cfg_doc.root ? jget(cfg_doc.root, "mounts") : NULL) < 0) {
        errno = EIO; /* no silent fallback: writes would land on the root disk instead */
        fatal("mounting the volumes and host folders failed (%s): %s", "see the lines above");
    }
    g_boot_doc = cfg_doc;
    g_boot_text = cfg_text;
    if (net_has_interfaces(cfg_doc.root ? jget(cfg_doc.root, "network") : NULL))
        boot_rest(&agent); /* it may wait seconds: the host's start waits for it as before */
    else
        agent.boot_rest = boot_rest; /* after the HELLO answer (agent.c) */
    if (open_channel(&agent) < 0) {
        errno = ENODEV;
        fatal("cannot open the channel %s: %s", g_cfg.channel);
    }
    ma_log("channel ready");
    enum shutdown_action how = agent_run(&agent);
    /* As PID 1 the agent returns only for a shutdown; power off regardless,
     * never fall out of main. */
    pid1_poweroff(how != SD_NONE ? how : agent.poweroff_means);
}
