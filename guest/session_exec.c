/* exec and shell sessions: fork, setsid, user switch, env layering, pipes or
 * a pty, timeouts, output limits and the exit report. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "frame.h"
#include "session.h"
#include "user.h"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

#define BASE_PATH "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
/* What execvp searches when the environment has no PATH (musl's default). */
#define DEFAULT_PATH "/usr/local/bin:/bin:/usr/bin"

struct exec_session {
    struct session s;
    pid_t pid;           /* also its process group; 0 until started */
    bool pty;
    bool running;        /* started and not reaped */
    bool reaped;
    int wstatus;
    bool timed_out;
    int64_t started_at_ms, completed_at_ms;
};

static struct exec_session *exec_of(struct session *s) { return (struct exec_session *)s; }

/* Stages the child reports through the error pipe. */
enum { CE_PTY = 1, CE_STDIO, CE_USER, CE_CWD, CE_EXEC };

struct child_report {
    int stage;
    int err;
};

struct env_vec {
    char **v;
    size_t n, cap;
};

static int env_set(struct env_vec *e, const char *kv)
{
    const char *eq = strchr(kv, '=');
    size_t klen = eq ? (size_t)(eq - kv) : strlen(kv);
    char *dup = strdup(kv);
    if (!dup)
        return -1;
    for (size_t i = 0; i < e->n; i++) {
        if (strncmp(e->v[i], kv, klen) == 0 && e->v[i][klen] == '=') {
            free(e->v[i]);
            e->v[i] = dup;
            return 0;
        }
    }
    if (e->n + 2 > e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 16;
        char **nv = realloc(e->v, cap * sizeof *nv);
        if (!nv) {
            free(dup);
            return -1;
        }
        e->v = nv;
        e->cap = cap;
    }
    e->v[e->n++] = dup;
    e->v[e->n] = NULL;
    return 0;
}

static void env_free(struct env_vec *e)
{
    for (size_t i = 0; i < e->n; i++)
        free(e->v[i]);
    free(e->v);
}

static bool valid_env_entry(const char *kv)
{
    const char *eq = strchr(kv, '=');
    return eq && eq != kv;
}

/* Send EXIT and end the session. */
static void report_exit(struct exec_session *e, const char *status, int exit_code, int sig,
                        const char *err_code, const char *err_msg)
{
    struct session *s = &e->s;
    struct buf b = { 0 };
    sb_puts(&b, "{\"status\":");
    jw_str(&b, status);
    sb_printf(&b, ",\"exit_code\":%d,\"signal\":%d", exit_code, sig);
    sb_printf(&b, ",\"stdout_truncated\":%s,\"stderr_truncated\":%s",
              s->truncated[1] ? "true" : "false", s->truncated[2] ? "true" : "false");
    sb_printf(&b, ",\"started_at_ms\":%lld,\"completed_at_ms\":%lld",
              (long long)e->started_at_ms, (long long)e->completed_at_ms);
    if (err_code) {
        sb_puts(&b, ",\"error\":{\"code\":");
        jw_str(&b, err_code);
        sb_puts(&b, ",\"message\":");
        jw_str(&b, err_msg ? err_msg : err_code);
        sb_puts(&b, "}");
    }
    sb_puts(&b, "}");
    session_exit(s, &b);
}

/* Why a process did not start: the failed_to_start report. */
struct start_failure {
    int exit_code;
    const char *code;
    char msg[512];
};

/* failed_to_start: EOF on the output streams, EXIT, end of session. */
static void fail_start(struct exec_session *e, const struct start_failure *f)
{
    if (!e->started_at_ms)
        e->started_at_ms = now_unix_ms();
    e->completed_at_ms = now_unix_ms();
    for (int st = 1; st <= 2; st++)
        if (e->s.out_used[st])
            session_send_eof(&e->s, st);
    report_exit(e, "failed_to_start", f->exit_code, 0, f->code, f->msg);
}

struct child_args {
    bool pty;
    const char *slave;
    int in_r, out_w, err_w, report_w;
    const struct user_info *user;
    const char *cwd; /* NULL = home, then / */
    char **argv, **envp;
    bool pdeathsig;
};

static void __attribute__((noreturn)) child_fail(int fd, int stage, int err)
{
    struct child_report r = { stage, err };
    ssize_t w = write(fd, &r, sizeof r);
    (void)w;
    _exit(127);
}

/* The signals whose disposition in the agent is not the default (its
 * handlers, SIGPIPE ignored, whatever it inherited ignored): the child puts
 * back only these, not every signal. Noted once, at the first spawn: the
 * agent sets its dispositions before it serves any session. */
static int g_changed_signals[NSIG];
static int g_n_changed_signals = -1;

static void note_changed_signals(void)
{
    if (g_n_changed_signals >= 0)
        return;
    g_n_changed_signals = 0;
    for (int sig = 1; sig < NSIG; sig++) {
        struct sigaction sa;
        if (sig == SIGKILL || sig == SIGSTOP || sigaction(sig, NULL, &sa) < 0)
            continue;
        if (sa.sa_handler != SIG_DFL)
            g_changed_signals[g_n_changed_signals++] = sig;
    }
}

static const char *env_get(char **envp, const char *name)
{
    size_t n = strlen(name);
    for (; *envp; envp++)
        if (strncmp(*envp, name, n) == 0 && (*envp)[n] == '=')
            return *envp + n + 1;
    return NULL;
}

/* execvp with an explicit environment, as musl's: a name without '/' is
 * looked up in the env's PATH (an empty entry is the working directory),
 * EACCES remembered while the search goes on, no /bin/sh retry on ENOEXEC.
 * Each candidate is checked with access() first, so a miss costs a path
 * lookup rather than a failed execve (which builds a new mm and copies argv
 * and env into it before it opens the file). Returns the errno to report. */
static int exec_search(char **argv, char **envp)
{
    const char *file = argv[0];
    if (!*file)
        return ENOENT;
    if (strchr(file, '/')) {
        execve(file, argv, envp);
        return errno;
    }
    const char *path = env_get(envp, "PATH");
    if (!path)
        path = DEFAULT_PATH;
    size_t flen = strnlen(file, NAME_MAX + 1);
    if (flen > NAME_MAX)
        return ENAMETOOLONG;
    bool seen_eacces = false;
    char buf[PATH_MAX];
    for (const char *p = path;; p++) {
        const char *z = strchrnul(p, ':');
        size_t dlen = (size_t)(z - p);
        if (dlen + 1 + flen < sizeof buf) {
            memcpy(buf, p, dlen);
            buf[dlen] = '/';
            memcpy(buf + dlen + (dlen > 0), file, flen + 1);
            int err = access(buf, X_OK) == 0 ? (execve(buf, argv, envp), errno) : errno;
            if (err == EACCES)
                seen_eacces = true;
            else if (err != ENOENT && err != ENOTDIR)
                return err;
        }
        if (!*z)
            break;
        p = z;
    }
    return seen_eacces ? EACCES : ENOENT;
}

/* Runs in a vfork-style child (clone with CLONE_VM | CLONE_VFORK): it shares
 * the agent's memory until execve, so it writes nothing but its own stack
 * and the kernel's per-process state (fds, credentials, dispositions), and
 * sets credentials with raw syscalls (musl's wrappers sync "all threads"
 * through shared state). The agent waits, suspended, until it execs or exits. */
static void __attribute__((noreturn)) child_main(const struct child_args *c)
{
    for (int i = 0; i < g_n_changed_signals; i++)
        signal(g_changed_signals[i], SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    setsid();
    if (c->pdeathsig)
        prctl(PR_SET_PDEATHSIG, SIGKILL);

    if (c->pty) {
        int t = open(c->slave, O_RDWR);
        if (t < 0)
            child_fail(c->report_w, CE_PTY, errno);
        if (ioctl(t, TIOCSCTTY, 0) < 0)
            child_fail(c->report_w, CE_PTY, errno);
        if (dup2(t, 0) < 0 || dup2(t, 1) < 0 || dup2(t, 2) < 0)
            child_fail(c->report_w, CE_STDIO, errno);
        if (t > 2)
            close(t);
    } else {
        int in = c->in_r;
        if (in < 0) {
            in = open("/dev/null", O_RDONLY);
            if (in < 0) {
                int p[2];
                if (pipe(p) < 0)
                    child_fail(c->report_w, CE_STDIO, errno);
                close(p[1]);
                in = p[0];
            }
        }
        if (dup2(in, 0) < 0 || dup2(c->out_w, 1) < 0 || dup2(c->err_w, 2) < 0)
            child_fail(c->report_w, CE_STDIO, errno);
    }
    /* Whatever else is open (the channel, other sessions, fds the agent
     * inherited) must not leak into the process. */
    syscall(SYS_close_range, 3u, ~0u, CLOSE_RANGE_CLOEXEC);

    if (c->user->do_switch) {
        if (syscall(SYS_setgroups, (size_t)c->user->ngroups, c->user->groups) < 0 ||
            syscall(SYS_setgid, c->user->gid) < 0 || syscall(SYS_setuid, c->user->uid) < 0)
            child_fail(c->report_w, CE_USER, errno);
    }
    if (c->cwd) {
        if (chdir(c->cwd) < 0)
            child_fail(c->report_w, CE_CWD, errno);
    } else if (chdir(c->user->home) < 0 && chdir("/") < 0) {
        child_fail(c->report_w, CE_CWD, errno);
    }
    child_fail(c->report_w, CE_EXEC, exec_search(c->argv, c->envp));
}

static int child_entry(void *arg)
{
    child_main(arg);
}

/* ---- parse: the OPEN request -> a validated spec ------------------------ */

/* A validated exec or shell request; strings point into the request. */
struct exec_spec {
    bool shell;
    const char **argv;   /* malloc'ed; a shell without argv runs the login shell */
    size_t argc;
    const char **env;    /* malloc'ed; K=V entries */
    size_t nenv;
    const char *cwd;     /* NULL: the user's home, then / */
    const char *term;
    const char *user;    /* NULL: the agent's own user */
    char user_buf[32];   /* user given as a number */
    bool want_stdin, pty;
    int64_t rows, cols, timeout_ms, out_limit, err_limit;
};

static void exec_spec_free(struct exec_spec *sp)
{
    free(sp->argv);
    free(sp->env);
}

/* Fills sp (free it with exec_spec_free either way); returns NULL, or what
 * is wrong with the request. */
static const char *exec_parse(const struct jv *req, bool shell, struct exec_spec *sp)
{
    *sp = (struct exec_spec){
        .shell = shell, .term = "xterm-256color", .pty = shell, .rows = 24, .cols = 80,
    };
    if (jfield_strv(req, "argv", &sp->argv, &sp->argc) < 0)
        return "argv must be an array of strings";
    if (!shell && sp->argc == 0)
        return "argv is required and must not be empty";
    if (jfield_strv(req, "env", &sp->env, &sp->nenv) < 0)
        return "env must be an array of strings";
    if (jfield_str(req, "cwd", &sp->cwd) < 0)
        return "cwd must be a string";
    if (jfield_str(req, "term", &sp->term) < 0)
        return "term must be a string";
    if (jfield_bool(req, "stdin", &sp->want_stdin) < 0)
        return "stdin must be a boolean";
    if (!shell && jfield_bool(req, "pty", &sp->pty) < 0)
        return "pty must be a boolean";
    if (jfield_int(req, "rows", 0, 65535, &sp->rows) < 0 || jfield_int(req, "cols", 0, 65535, &sp->cols) < 0)
        return "rows/cols must be integers in 0..65535";
    if (jfield_int(req, "timeout_ms", 0, INT64_MAX / 4, &sp->timeout_ms) < 0)
        return "timeout_ms must be a non-negative integer";
    if (jfield_int(req, "stdout_limit", 0, INT64_MAX, &sp->out_limit) < 0 ||
        jfield_int(req, "stderr_limit", 0, INT64_MAX, &sp->err_limit) < 0)
        return "stdout_limit/stderr_limit must be non-negative integers";
    struct jv *uv = jget(req, "user");
    if (uv && uv->type == J_INT && uv->i >= 0 && uv->i < 0xFFFFFFFFll) {
        snprintf(sp->user_buf, sizeof sp->user_buf, "%lld", (long long)uv->i);
        sp->user = sp->user_buf;
    } else if (jfield_str(req, "user", &sp->user) < 0) {
        return "user must be a string";
    }
    for (size_t i = 0; i < sp->nenv; i++)
        if (!valid_env_entry(sp->env[i]))
            return "env entries must be K=V";
    if (sp->cwd && !*sp->cwd)
        sp->cwd = NULL;
    if (sp->rows == 0)
        sp->rows = 24;
    if (sp->cols == 0)
        sp->cols = 80;
    return NULL;
}

/* ---- spawn: user, environment, stdio, fork, the child's report ---------- */

/* Environment: base, per-boot, request. Returns -1 when out of memory. */
static int build_env(struct env_vec *ev, const struct exec_spec *sp, const struct user_info *u,
                     const struct session_host *h)
{
    char kv[512];
    env_set(ev, BASE_PATH);
    snprintf(kv, sizeof kv, "HOME=%s", u->home);
    env_set(ev, kv);
    if (sp->pty) {
        snprintf(kv, sizeof kv, "TERM=%s", sp->term);
        env_set(ev, kv);
    }
    for (size_t i = 0; i < h->n_boot_env; i++)
        env_set(ev, h->boot_env[i]);
    for (size_t i = 0; i < sp->nenv; i++)
        env_set(ev, sp->env[i]);
    return ev->v ? 0 : -1;
}

/* The process's stdio: a pty, or pipes; and the child's report pipe. */
struct exec_stdio {
    int master;          /* pty master, or -1 */
    char slave[128];
    int in[2], out[2], err[2], report[2];
};

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void close_pair(int p[2])
{
    close_fd(&p[0]);
    close_fd(&p[1]);
}

static void close_stdio(struct exec_stdio *io)
{
    close_pair(io->in);
    close_pair(io->out);
    close_pair(io->err);
    close_pair(io->report);
    close_fd(&io->master);
}

static int open_stdio(const struct exec_spec *sp, struct exec_stdio *io, struct start_failure *f)
{
    const char *fail_code = NULL;
    int fail_errno = 0;
    if (sp->pty) {
        io->master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (io->master < 0 || grantpt(io->master) < 0 || unlockpt(io->master) < 0 ||
            ptsname_r(io->master, io->slave, sizeof io->slave) != 0) {
            fail_code = "pty_failed";
            fail_errno = errno;
        } else {
            struct winsize ws = { .ws_row = (unsigned short)sp->rows, .ws_col = (unsigned short)sp->cols };
            ioctl(io->master, TIOCSWINSZ, &ws);
        }
    } else {
        if ((sp->want_stdin && pipe2(io->in, O_CLOEXEC) < 0) || pipe2(io->out, O_CLOEXEC) < 0 ||
            pipe2(io->err, O_CLOEXEC) < 0) {
            fail_code = "io_error";
            fail_errno = errno;
        }
    }
    if (!fail_code && pipe2(io->report, O_CLOEXEC) < 0) {
        fail_code = "io_error";
        fail_errno = errno;
    }
    if (!fail_code)
        return 0;
    *f = (struct start_failure){ .exit_code = 126, .code = fail_code };
    snprintf(f->msg, sizeof f->msg, "setting up the process: %s", strerror(fail_errno));
    return -1;
}

/* Waits for the child's report: true when it failed before running the
 * program (the child is reaped and f filled), false once it has exec'ed. */
static bool child_failed(struct exec_stdio *io, pid_t pid, const struct child_args *ca,
                         struct start_failure *f)
{
    struct child_report rep;
    ssize_t r;
    do
        r = read(io->report[0], &rep, sizeof rep);
    while (r < 0 && errno == EINTR);
    close_fd(&io->report[0]);
    if (r != (ssize_t)sizeof rep)
        return false;
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    const char *what = "exec";
    *f = (struct start_failure){ .exit_code = 126 };
    switch (rep.stage) {
    case CE_PTY: f->code = "pty_failed"; what = "opening the pty"; break;
    case CE_STDIO: f->code = "io_error"; what = "setting up stdio"; break;
    case CE_USER: f->code = "bad_user"; what = "switching user"; break;
    case CE_CWD: f->code = "bad_cwd"; what = ca->cwd ? ca->cwd : "chdir"; break;
    default:
        what = ca->argv[0];
        if (rep.err == ENOENT || rep.err == ENOTDIR) {
            f->code = "not_found";
            f->exit_code = 127;
        } else if (rep.err == EACCES || rep.err == EPERM) {
            f->code = "permission_denied";
        } else {
            f->code = "exec_failed";
        }
    }
    snprintf(f->msg, sizeof f->msg, "%s: %s", what, strerror(rep.err));
    return true;
}

/* Fork the child on io; returns its pid once it has exec'ed, or -1 with f
 * filled. The child's ends of io are closed either way. */
static pid_t fork_child(const struct child_args *ca, struct exec_stdio *io, struct start_failure *f)
{
    note_changed_signals();
    /* The child's stack while it shares the agent's memory: one at a time
     * uses it, as the agent is single-threaded and suspended until the child
     * execs or exits. */
    static char child_stack[32 << 10] __attribute__((aligned(16)));
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
    pid_t pid = clone(child_entry, child_stack + sizeof child_stack, CLONE_VM | CLONE_VFORK | SIGCHLD,
                      (void *)ca);
    int fork_errno = errno;
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) {
        *f = (struct start_failure){ .exit_code = 126, .code = "io_error" };
        snprintf(f->msg, sizeof f->msg, "fork: %s", strerror(fork_errno));
        return -1;
    }
    close_fd(&io->report[1]);
    close_fd(&io->in[0]);
    close_fd(&io->out[1]);
    close_fd(&io->err[1]);
    return child_failed(io, pid, ca, f) ? -1 : pid;
}

/* Start the process described by sp. Returns its pid with the parent's
 * ends of its stdio open in io, or -1 with f filled (io closed). */
static pid_t exec_spawn(const struct exec_spec *sp, const struct session_host *h,
                        struct exec_stdio *io, struct start_failure *f)
{
    *io = (struct exec_stdio){
        .master = -1, .in = { -1, -1 }, .out = { -1, -1 }, .err = { -1, -1 }, .report = { -1, -1 },
    };
    struct user_info u;
    f->exit_code = 126;
    if (user_resolve(sp->user, &u, &f->code, f->msg, sizeof f->msg) < 0)
        return -1;
    char *shell_argv[3];
    if (sp->shell && sp->argc == 0) {
        const char *sh = u.shell;
        if (!*sh || access(sh, X_OK) != 0)
            sh = "/bin/sh";
        shell_argv[0] = (char *)sh;
        shell_argv[1] = (char *)"-l";
        shell_argv[2] = NULL;
    }
    struct env_vec ev = { 0 };
    if (build_env(&ev, sp, &u, h) < 0) {
        f->code = "io_error";
        snprintf(f->msg, sizeof f->msg, "out of memory");
        return -1;
    }
    pid_t pid = -1;
    if (open_stdio(sp, io, f) == 0) {
        struct child_args ca = {
            .pty = sp->pty,
            .slave = io->slave,
            .in_r = io->in[0],
            .out_w = io->out[1],
            .err_w = io->err[1],
            .report_w = io->report[1],
            .user = &u,
            .cwd = sp->cwd,
            .argv = sp->shell && sp->argc == 0 ? shell_argv : (char **)sp->argv,
            .envp = ev.v,
            .pdeathsig = h->pdeathsig,
        };
        pid = fork_child(&ca, io, f);
    }
    if (pid < 0)
        close_stdio(io);
    env_free(&ev);
    return pid;
}

/* ---- attach: the running process becomes the session's streams --------- */

static void exec_attach(struct exec_session *e, const struct exec_spec *sp, struct exec_stdio *io,
                        pid_t pid)
{
    struct session *s = &e->s;
    e->pid = pid;
    e->running = true;
    if (sp->timeout_ms > 0)
        s->deadline_ms = now_mono_ms() + sp->timeout_ms;
    if (sp->pty) {
        set_nonblock(io->master, true);
        s->in_fd = io->master;
        s->out_fd[1] = io->master;
    } else {
        if (sp->want_stdin) {
            set_nonblock(io->in[1], true);
            s->in_fd = io->in[1];
        } else {
            s->in_discard = true;
            s->in_closed = true;
        }
        set_nonblock(io->out[0], true);
        set_nonblock(io->err[0], true);
        s->out_fd[1] = io->out[0];
        s->out_fd[2] = io->err[0];
    }
    struct buf b = { 0 };
    sb_printf(&b, "{\"started\":{\"pid\":%d}}", (int)pid);
    session_send_json(s, F_CONTROL, &b);
    buf_free(&b);
}

static void exec_open(struct session *s, const struct jv *req, bool shell)
{
    struct exec_session *e = exec_of(s);
    struct exec_spec sp;
    const char *bad = exec_parse(req, shell, &sp);
    if (bad) {
        exec_spec_free(&sp);
        session_fail(s, "bad_request", bad);
        return;
    }
    e->pty = sp.pty;
    s->out_pty = sp.pty;
    s->out_used[1] = true;
    s->out_used[2] = !sp.pty;
    s->limit[1] = (uint64_t)sp.out_limit;
    s->limit[2] = (uint64_t)sp.err_limit;
    e->started_at_ms = now_unix_ms();

    struct exec_stdio io;
    struct start_failure f;
    pid_t pid = exec_spawn(&sp, s->host, &io, &f);
    if (pid < 0)
        fail_start(e, &f);
    else
        exec_attach(e, &sp, &io, pid);
    exec_spec_free(&sp);
}

static void exec_open_request(struct session *s, const struct jv *req) { exec_open(s, req, false); }
static void shell_open_request(struct session *s, const struct jv *req) { exec_open(s, req, true); }

/* ---- the running session ------------------------------------------------ */

static void exec_on_input_eof(struct session *s)
{
    if (exec_of(s)->pty) {
        /* A terminal has no EOF of its own: type the EOF character, as a
         * user at the terminal would (twice to end an unfinished line). */
        struct termios t;
        if (s->in_fd >= 0 && tcgetattr(s->in_fd, &t) == 0 && (t.c_lflag & ICANON)) {
            char eof[2] = { (char)t.c_cc[VEOF], (char)t.c_cc[VEOF] };
            size_t n = (s->last_in == '\n' || s->last_in == 0) ? 1 : 2;
            ssize_t w = write(s->in_fd, eof, n);
            (void)w;
        }
    }
    session_close_in(s);
}

static void exec_kill(struct exec_session *e, int sig)
{
    if (e->pid > 0)
        kill(-e->pid, sig);
}

static pid_t exec_process_group(const struct session *s)
{
    return ((const struct exec_session *)s)->pid;
}

static bool exec_on_child_exit(struct session *s, pid_t pid, int wstatus)
{
    struct exec_session *e = exec_of(s);
    if (e->pid != pid || e->reaped)
        return false;
    e->reaped = true;
    e->running = false;
    e->wstatus = wstatus;
    e->completed_at_ms = now_unix_ms();
    if (e->pty) {
        s->out_writer_gone = true;
        session_drop_input(s);
    }
    return true;
}

static void exec_check_timeout(struct session *s, int64_t now)
{
    struct exec_session *e = exec_of(s);
    if (!s->deadline_ms || now < s->deadline_ms)
        return;
    s->deadline_ms = 0;
    if (e->running) {
        e->timed_out = true;
        exec_kill(e, SIGKILL);
    } else if (s->out_fd[1] >= 0 || s->out_fd[2] >= 0) {
        /* The process exited but its group still holds the output open. */
        exec_kill(e, SIGKILL);
    }
}

static bool exec_maybe_finish(struct session *s)
{
    struct exec_session *e = exec_of(s);
    if (!e->reaped)
        return false;
    for (int st = 1; st <= 2; st++)
        if (s->out_used[st] && !s->out_eof_sent[st])
            return false;
    int ws = e->wstatus;
    if (e->timed_out)
        report_exit(e, "timed_out", 124, SIGKILL, NULL, NULL);
    else if (WIFSIGNALED(ws))
        report_exit(e, "signaled", 128 + WTERMSIG(ws), WTERMSIG(ws), NULL, NULL);
    else
        report_exit(e, "exited", WEXITSTATUS(ws), 0, NULL, NULL);
    return true;
}

static void exec_control(struct session *s, const struct jv *msg)
{
    struct exec_session *e = exec_of(s);
    struct jv *rz = jget(msg, "resize");
    int64_t sig = 0;
    if (rz) {
        int64_t rows = 0, cols = 0;
        if (rz->type != J_OBJ || jfield_int(rz, "rows", 1, 65535, &rows) != 1 ||
            jfield_int(rz, "cols", 1, 65535, &cols) != 1) {
            session_fail(s, "bad_request", "resize needs integer rows and cols");
            return;
        }
        int fd = s->out_fd[1] >= 0 ? s->out_fd[1] : s->in_fd;
        if (e->pty && fd >= 0) {
            struct winsize ws = { .ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols };
            ioctl(fd, TIOCSWINSZ, &ws);
        }
    }
    int r = jfield_int(msg, "signal", 1, 64, &sig);
    if (r < 0) {
        session_fail(s, "bad_request", "signal must be an integer in 1..64");
        return;
    }
    if (r == 1 && !e->reaped)
        exec_kill(e, (int)sig);
}

/* Kill the group unless it is gone: reaped, and no one left holding the
 * output open. */
static void exec_destroy(struct session *s)
{
    struct exec_session *e = exec_of(s);
    if (e->pid > 0) {
        bool pipes_open = s->out_fd[1] >= 0 || s->out_fd[2] >= 0;
        if (!e->reaped || pipes_open)
            kill(-e->pid, SIGKILL);
    }
}

#define EXEC_OPS(open_fn)                         \
    {                                             \
        .size = sizeof(struct exec_session),      \
        .open = open_fn,                          \
        .on_input_eof = exec_on_input_eof,        \
        .on_control = exec_control,               \
        .maybe_finish = exec_maybe_finish,        \
        .check_timeout = exec_check_timeout,      \
        .on_child_exit = exec_on_child_exit,      \
        .process_group = exec_process_group,      \
        .destroy = exec_destroy,                  \
    }

const struct session_ops exec_session_ops = EXEC_OPS(exec_open_request);
const struct session_ops shell_session_ops = EXEC_OPS(shell_open_request);
