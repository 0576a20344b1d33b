/* The workspace's service: spawn, reap, restart with backoff, output log,
 * state file (service.h). PID 1 is single-threaded, so a plain fork is safe;
 * the child drops to the configured user before it runs sh -c COMMAND. */
#define _GNU_SOURCE
#include "service.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "user.h"
#include "util.h"

#define BACKOFF_FIRST_MS 1000
#define BACKOFF_MAX_MS 30000
/* a run that lasted this long starts the backoff over */
#define BACKOFF_RESET_MS 30000
#define SERVICE_PATH "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define SERVICE_FIELD_MAX 8192

enum restart_policy { RESTART_NEVER, RESTART_ON_FAILURE, RESTART_ALWAYS };
static const char *const policy_names[] = { "never", "on-failure", "always" };

static struct {
    bool configured, stopping;
    char *command, *user, *workdir;
    enum restart_policy policy;
    const struct session_host *host;
    pid_t pid;              /* running process (its own process group), 0 if none */
    int out_r;              /* read end of its stdout+stderr pipe, -1 if none */
    int log_fd;
    size_t log_size;
    int64_t started_mono, started_unix;
    int64_t next_start;     /* monotonic ms a restart is due, 0 if none */
    int backoff_ms;
    unsigned restarts;
    bool has_exit;
    int last_code, last_signal;
    char state[16];         /* running, backoff, exited, stopped */
} g_svc = { .out_r = -1, .log_fd = -1 };

static char *dup_field(const struct jv *obj, const char *key, bool required)
{
    const char *v = NULL;
    int r = jfield_str(obj, key, &v);
    if (r < 0 || (r == 0 && required) || (v && (strlen(v) > SERVICE_FIELD_MAX || (required && !*v)))) {
        ma_log("service: \"%s\" must be a%s string of at most %d bytes", key, required ? " non-empty" : "",
               SERVICE_FIELD_MAX);
        return NULL;
    }
    return strdup(v ? v : "");
}

/* ---- the log ------------------------------------------------------------ */

static void log_open(bool truncate)
{
    g_svc.log_fd = open(SERVICE_LOG, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW |
                                         (truncate ? O_TRUNC : 0), 0600);
    struct stat st;
    g_svc.log_size = g_svc.log_fd >= 0 && fstat(g_svc.log_fd, &st) == 0 ? (size_t)st.st_size : 0;
}

/* Append to the log, rotating to service.log.1 before it passes SERVICE_LOG_MAX. */
static void log_write(const char *p, size_t n)
{
    while (n > 0) {
        if (g_svc.log_fd < 0)
            return;
        if (g_svc.log_size >= SERVICE_LOG_MAX) {
            close(g_svc.log_fd);
            rename(SERVICE_LOG, SERVICE_LOG ".1");
            log_open(true);
            continue;
        }
        size_t room = SERVICE_LOG_MAX - g_svc.log_size, chunk = n < room ? n : room;
        if (write_all_timeout(g_svc.log_fd, p, chunk, 1000) < 0)
            return;
        g_svc.log_size += chunk;
        p += chunk;
        n -= chunk;
    }
}

static void log_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void log_note(const char *fmt, ...)
{
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (len < 0)
        return;
    if ((size_t)len > sizeof line - 2)
        len = (int)sizeof line - 2;
    line[len++] = '\n';
    log_write("[microagent] ", 13);
    log_write(line, (size_t)len);
}

/* ---- the state file ------------------------------------------------------ */

static void write_state(void)
{
    struct buf b = { 0 };
    sb_puts(&b, "{\"command\":");
    jw_str(&b, g_svc.command);
    sb_printf(&b, ",\"restart\":\"%s\",\"state\":\"%s\",\"pid\":%d,\"restarts\":%u,\"startedAtMs\":%lld",
              policy_names[g_svc.policy], g_svc.state, (int)g_svc.pid, g_svc.restarts,
              (long long)g_svc.started_unix);
    if (!g_svc.has_exit)
        sb_puts(&b, ",\"lastExit\":null");
    else if (g_svc.last_signal)
        sb_printf(&b, ",\"lastExit\":{\"signal\":%d}", g_svc.last_signal);
    else
        sb_printf(&b, ",\"lastExit\":{\"code\":%d}", g_svc.last_code);
    if (g_svc.next_start)
        sb_printf(&b, ",\"restartInMs\":%lld", (long long)(g_svc.next_start - now_mono_ms()));
    sb_puts(&b, "}\n");
    if (!b.data) {
        buf_free(&b);
        return;
    }
    int fd = open(SERVICE_STATE ".tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd >= 0) {
        bool ok = write_all_timeout(fd, b.data + b.off, buf_used(&b), 1000) == 0;
        close(fd);
        if (ok)
            rename(SERVICE_STATE ".tmp", SERVICE_STATE);
    }
    buf_free(&b);
}

/* ---- spawn --------------------------------------------------------------- */

static void __attribute__((noreturn)) child_die(const char *what)
{
    dprintf(2, "microagent: service: %s: %s\n", what, strerror(errno));
    _exit(127);
}

static void __attribute__((noreturn)) child_run(int out_w, const struct user_info *u, char **envp)
{
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            signal(sig, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    setsid();
    int in = open("/dev/null", O_RDONLY);
    if (in < 0 || dup2(in, 0) < 0 || dup2(out_w, 1) < 0 || dup2(out_w, 2) < 0)
        _exit(127);
    for (int fd = 3; fd < 1024; fd++)
        close(fd);
    if (u->do_switch && (setgroups((size_t)u->ngroups, u->groups) < 0 || setgid(u->gid) < 0 ||
                         setuid(u->uid) < 0))
        child_die("switching user");
    if (*g_svc.workdir ? chdir(g_svc.workdir) < 0 : (chdir(u->home) < 0 && chdir("/") < 0))
        child_die(*g_svc.workdir ? g_svc.workdir : "chdir");
    char *argv[] = { (char *)"sh", (char *)"-c", g_svc.command, NULL };
    execve("/bin/sh", argv, envp);
    child_die("/bin/sh");
}

static void spawn(void)
{
    g_svc.next_start = 0;
    struct user_info u;
    const char *code = NULL;
    char msg[256];
    if (user_resolve(*g_svc.user ? g_svc.user : NULL, &u, &code, msg, sizeof msg) < 0) {
        log_note("cannot start: %s", msg);
        snprintf(g_svc.state, sizeof g_svc.state, "exited");
        g_svc.has_exit = true;
        g_svc.last_code = 126;
        g_svc.last_signal = 0;
        write_state();
        return;
    }
    /* The environment: PATH, HOME, then the per-boot env (image env and -e). */
    size_t n = g_svc.host ? g_svc.host->n_boot_env : 0;
    char **envp = calloc(n + 3, sizeof *envp);
    char home[300];
    snprintf(home, sizeof home, "HOME=%s", u.home);
    int p[2] = { -1, -1 };
    if (!envp || pipe2(p, O_CLOEXEC) < 0) {
        log_note("cannot start: %s", strerror(errno));
        free(envp);
        return;
    }
    envp[0] = (char *)SERVICE_PATH;
    envp[1] = home;
    for (size_t i = 0; i < n; i++)
        envp[2 + i] = g_svc.host->boot_env[i];
    pid_t pid = fork();
    if (pid == 0)
        child_run(p[1], &u, envp);
    int fork_errno = errno;
    free(envp);
    close(p[1]);
    if (pid < 0) {
        close(p[0]);
        log_note("cannot start: fork: %s", strerror(fork_errno));
        return;
    }
    set_nonblock(p[0], true);
    g_svc.out_r = p[0];
    g_svc.pid = pid;
    g_svc.started_mono = now_mono_ms();
    g_svc.started_unix = now_unix_ms();
    snprintf(g_svc.state, sizeof g_svc.state, "running");
    log_note("service started (pid %d)", (int)pid);
    write_state();
}

/* ---- the loop's hooks ---------------------------------------------------- */

void service_configure(const struct jv *svc, const struct session_host *h)
{
    if (!svc)
        return;
    const char *restart = "never";
    if (svc->type != J_OBJ || jfield_str(svc, "restart", &restart) < 0) {
        ma_log("service: the config's \"service\" must be an object; not started");
        return;
    }
    g_svc.command = dup_field(svc, "command", true);
    g_svc.user = dup_field(svc, "user", false);
    g_svc.workdir = dup_field(svc, "workdir", false);
    if (!g_svc.command || !g_svc.user || !g_svc.workdir)
        return;
    if (strcmp(restart, "never") == 0)
        g_svc.policy = RESTART_NEVER;
    else if (strcmp(restart, "on-failure") == 0)
        g_svc.policy = RESTART_ON_FAILURE;
    else if (strcmp(restart, "always") == 0)
        g_svc.policy = RESTART_ALWAYS;
    else {
        ma_log("service: restart must be never, on-failure or always; not started");
        return;
    }
    g_svc.host = h;
    g_svc.configured = true;
    g_svc.backoff_ms = BACKOFF_FIRST_MS;
    mkdir(SERVICE_DIR, 0700);
    log_open(false);
    spawn();
}

int service_fd(void)
{
    return g_svc.out_r;
}

void service_on_output(void)
{
    char buf[16384];
    for (int i = 0; i < 16 && g_svc.out_r >= 0; i++) {
        ssize_t r = read(g_svc.out_r, buf, sizeof buf);
        if (r > 0) {
            log_write(buf, (size_t)r);
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0 || errno != EAGAIN) {  /* every writer is gone */
            close(g_svc.out_r);
            g_svc.out_r = -1;
        }
        return;
    }
}

int service_timeout_ms(int64_t now)
{
    if (!g_svc.next_start)
        return -1;
    int64_t left = g_svc.next_start - now;
    return left < 0 ? 0 : left > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : (int)left;
}

void service_tick(int64_t now)
{
    if (g_svc.configured && !g_svc.stopping && g_svc.next_start && now >= g_svc.next_start) {
        g_svc.restarts++;
        spawn();
    }
}

bool service_child_exited(pid_t pid, int wstatus)
{
    if (!g_svc.configured || pid <= 0 || pid != g_svc.pid)
        return false;
    g_svc.pid = 0;
    g_svc.has_exit = true;
    g_svc.last_code = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
    g_svc.last_signal = WIFSIGNALED(wstatus) ? WTERMSIG(wstatus) : 0;
    /* Whatever it wrote last; a pipe still held by its children stays polled. */
    if (g_svc.out_r >= 0) {
        service_on_output();
        if (g_svc.out_r >= 0) {
            close(g_svc.out_r);
            g_svc.out_r = -1;
        }
    }
    if (g_svc.last_signal)
        log_note("service exited on signal %d", g_svc.last_signal);
    else
        log_note("service exited with code %d", g_svc.last_code);
    bool failed = g_svc.last_signal || g_svc.last_code != 0;
    bool again = !g_svc.stopping && (g_svc.policy == RESTART_ALWAYS ||
                                     (g_svc.policy == RESTART_ON_FAILURE && failed));
    if (!again) {
        snprintf(g_svc.state, sizeof g_svc.state, g_svc.stopping ? "stopped" : "exited");
        write_state();
        return true;
    }
    int64_t now = now_mono_ms();
    if (now - g_svc.started_mono >= BACKOFF_RESET_MS)
        g_svc.backoff_ms = BACKOFF_FIRST_MS;
    g_svc.next_start = now + g_svc.backoff_ms;
    log_note("restarting in %d ms (restart %u)", g_svc.backoff_ms, g_svc.restarts + 1);
    g_svc.backoff_ms = g_svc.backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : g_svc.backoff_ms * 2;
    snprintf(g_svc.state, sizeof g_svc.state, "backoff");
    write_state();
    return true;
}

void service_stop(void)
{
    if (!g_svc.configured || g_svc.stopping)
        return;
    g_svc.stopping = true;
    g_svc.next_start = 0;
    if (!g_svc.pid) {
        snprintf(g_svc.state, sizeof g_svc.state, "stopped");
        write_state();
    }
}
