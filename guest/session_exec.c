/* exec and shell sessions: fork, setsid, user switch, env layering, pipes or
 * a pty, timeouts, output limits and the exit report. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
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

#include "agent.h"
#include "session.h"
#include "user.h"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

#define BASE_PATH "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

extern char **environ;

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

static void send_exit_json(struct session *s, const char *status, int exit_code, int sig,
                           const char *err_code, const char *err_msg)
{
    struct buf b = { 0 };
    sb_puts(&b, "{\"status\":");
    jw_str(&b, status);
    sb_printf(&b, ",\"exit_code\":%d,\"signal\":%d", exit_code, sig);
    sb_printf(&b, ",\"stdout_truncated\":%s,\"stderr_truncated\":%s",
              s->truncated[1] ? "true" : "false", s->truncated[2] ? "true" : "false");
    sb_printf(&b, ",\"started_at_ms\":%lld,\"completed_at_ms\":%lld",
              (long long)s->started_at_ms, (long long)s->completed_at_ms);
    if (err_code) {
        sb_puts(&b, ",\"error\":{\"code\":");
        jw_str(&b, err_code);
        sb_puts(&b, ",\"message\":");
        jw_str(&b, err_msg ? err_msg : err_code);
        sb_puts(&b, "}");
    }
    sb_puts(&b, "}");
    session_send_json(s, F_EXIT, &b);
    buf_free(&b);
}

/* failed_to_start: EOF on the output streams, EXIT, end of session. */
static void fail_start(struct session *s, int exit_code, const char *code, const char *msg)
{
    if (!s->started_at_ms)
        s->started_at_ms = now_unix_ms();
    s->completed_at_ms = now_unix_ms();
    for (int st = 1; st <= 2; st++)
        if (s->out_used[st])
            session_send_eof(s, st);
    send_exit_json(s, "failed_to_start", exit_code, 0, code, msg);
    s->pid = 0;
    session_destroy(s);
}

static void close_pair(int p[2])
{
    if (p[0] >= 0)
        close(p[0]);
    if (p[1] >= 0)
        close(p[1]);
    p[0] = p[1] = -1;
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

static void __attribute__((noreturn)) child_main(const struct child_args *c)
{
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        signal(sig, SIG_DFL);
    }
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
        if (setgroups((size_t)c->user->ngroups, c->user->groups) < 0 ||
            setgid(c->user->gid) < 0 || setuid(c->user->uid) < 0)
            child_fail(c->report_w, CE_USER, errno);
    }
    if (c->cwd) {
        if (chdir(c->cwd) < 0)
            child_fail(c->report_w, CE_CWD, errno);
    } else if (chdir(c->user->home) < 0 && chdir("/") < 0) {
        child_fail(c->report_w, CE_CWD, errno);
    }
    environ = c->envp;
    execvp(c->argv[0], c->argv);
    child_fail(c->report_w, CE_EXEC, errno);
}

void exec_open(struct session *s, const struct jv *req, bool shell)
{
    struct agent *a = s->agent;
    const char **argv = NULL, **env = NULL;
    size_t argc = 0, nenv = 0;
    const char *cwd = NULL, *term = "xterm-256color", *user_spec = NULL;
    char user_buf[32];
    bool want_stdin = false, pty = shell;
    int64_t rows = 24, cols = 80, timeout_ms = 0, out_limit = 0, err_limit = 0;
    const char *bad = NULL;
    struct env_vec ev = { 0 };
    struct user_info u;
    int in_p[2] = { -1, -1 }, out_p[2] = { -1, -1 }, err_p[2] = { -1, -1 }, rep_p[2] = { -1, -1 };
    int master = -1;
    char slave[128] = "";
    char *shell_argv[3];

    if (jfield_strv(req, "argv", &argv, &argc) < 0)
        bad = "argv must be an array of strings";
    else if (!shell && argc == 0)
        bad = "argv is required and must not be empty";
    else if (jfield_strv(req, "env", &env, &nenv) < 0)
        bad = "env must be an array of strings";
    else if (jfield_str(req, "cwd", &cwd) < 0)
        bad = "cwd must be a string";
    else if (jfield_str(req, "term", &term) < 0)
        bad = "term must be a string";
    else if (jfield_bool(req, "stdin", &want_stdin) < 0)
        bad = "stdin must be a boolean";
    else if (!shell && jfield_bool(req, "pty", &pty) < 0)
        bad = "pty must be a boolean";
    else if (jfield_int(req, "rows", 0, 65535, &rows) < 0 || jfield_int(req, "cols", 0, 65535, &cols) < 0)
        bad = "rows/cols must be integers in 0..65535";
    else if (jfield_int(req, "timeout_ms", 0, INT64_MAX / 4, &timeout_ms) < 0)
        bad = "timeout_ms must be a non-negative integer";
    else if (jfield_int(req, "stdout_limit", 0, INT64_MAX, &out_limit) < 0 ||
             jfield_int(req, "stderr_limit", 0, INT64_MAX, &err_limit) < 0)
        bad = "stdout_limit/stderr_limit must be non-negative integers";
    if (!bad) {
        struct jv *uv = jget(req, "user");
        if (uv && uv->type == J_INT && uv->i >= 0 && uv->i < 0xFFFFFFFFll) {
            snprintf(user_buf, sizeof user_buf, "%lld", (long long)uv->i);
            user_spec = user_buf;
        } else if (jfield_str(req, "user", &user_spec) < 0) {
            bad = "user must be a string";
        }
    }
    for (size_t i = 0; !bad && i < nenv; i++)
        if (!valid_env_entry(env[i]))
            bad = "env entries must be K=V";
    if (bad) {
        free(argv);
        free(env);
        session_fail(s, "bad_request", bad);
        return;
    }
    if (cwd && !*cwd)
        cwd = NULL;
    if (rows == 0)
        rows = 24;
    if (cols == 0)
        cols = 80;
    s->pty = pty;
    s->out_used[1] = true;
    s->out_used[2] = !pty;
    s->limit[1] = (uint64_t)out_limit;
    s->limit[2] = (uint64_t)err_limit;
    s->started_at_ms = now_unix_ms();

    const char *ecode;
    char msg[512];
    if (user_resolve(user_spec, &u, &ecode, msg, sizeof msg) < 0) {
        free(argv);
        free(env);
        fail_start(s, 126, ecode, msg);
        return;
    }
    if (shell && argc == 0) {
        free(argv);
        const char *sh = u.shell;
        if (!*sh || access(sh, X_OK) != 0)
            sh = "/bin/sh";
        shell_argv[0] = (char *)sh;
        shell_argv[1] = (char *)"-l";
        shell_argv[2] = NULL;
        argv = NULL;
    }

    /* Environment: base, per-boot, request. */
    char kv[512];
    env_set(&ev, BASE_PATH);
    snprintf(kv, sizeof kv, "HOME=%s", u.home);
    env_set(&ev, kv);
    if (pty) {
        snprintf(kv, sizeof kv, "TERM=%s", term);
        env_set(&ev, kv);
    }
    for (size_t i = 0; i < a->n_boot_env; i++)
        env_set(&ev, a->boot_env[i]);
    for (size_t i = 0; i < nenv; i++)
        env_set(&ev, env[i]);
    free(env);
    if (!ev.v) {
        free(argv);
        fail_start(s, 126, "io_error", "out of memory");
        return;
    }

    const char *fail_code = NULL;
    int fail_errno = 0;
    if (pty) {
        master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (master < 0 || grantpt(master) < 0 || unlockpt(master) < 0 ||
            ptsname_r(master, slave, sizeof slave) != 0) {
            fail_code = "pty_failed";
            fail_errno = errno;
        } else {
            struct winsize ws = { .ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols };
            ioctl(master, TIOCSWINSZ, &ws);
        }
    } else {
        if ((want_stdin && pipe2(in_p, O_CLOEXEC) < 0) || pipe2(out_p, O_CLOEXEC) < 0 ||
            pipe2(err_p, O_CLOEXEC) < 0) {
            fail_code = "io_error";
            fail_errno = errno;
        }
    }
    if (!fail_code && pipe2(rep_p, O_CLOEXEC) < 0) {
        fail_code = "io_error";
        fail_errno = errno;
    }
    if (fail_code) {
        snprintf(msg, sizeof msg, "setting up the process: %s", strerror(fail_errno));
        goto fail_cleanup;
    }

    struct child_args ca = {
        .pty = pty,
        .slave = slave,
        .in_r = in_p[0],
        .out_w = out_p[1],
        .err_w = err_p[1],
        .report_w = rep_p[1],
        .user = &u,
        .cwd = cwd,
        .argv = argv ? (char **)argv : shell_argv,
        .envp = ev.v,
        .pdeathsig = !a->pid1,
    };
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
    pid_t pid = fork();
    if (pid == 0)
        child_main(&ca);
    int fork_errno = errno;
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) {
        fail_code = "io_error";
        snprintf(msg, sizeof msg, "fork: %s", strerror(fork_errno));
        goto fail_cleanup;
    }
    close(rep_p[1]);
    rep_p[1] = -1;
    if (in_p[0] >= 0) {
        close(in_p[0]);
        in_p[0] = -1;
    }
    if (out_p[1] >= 0) {
        close(out_p[1]);
        out_p[1] = -1;
    }
    if (err_p[1] >= 0) {
        close(err_p[1]);
        err_p[1] = -1;
    }
    struct child_report rep;
    ssize_t r;
    do
        r = read(rep_p[0], &rep, sizeof rep);
    while (r < 0 && errno == EINTR);
    close(rep_p[0]);
    rep_p[0] = -1;
    if (r == (ssize_t)sizeof rep) {
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
            ;
        int code = 126;
        const char *what = "exec";
        switch (rep.stage) {
        case CE_PTY: fail_code = "pty_failed"; what = "opening the pty"; break;
        case CE_STDIO: fail_code = "io_error"; what = "setting up stdio"; break;
        case CE_USER: fail_code = "bad_user"; what = "switching user"; break;
        case CE_CWD: fail_code = "bad_cwd"; what = cwd ? cwd : "chdir"; break;
        default:
            what = ca.argv[0];
            if (rep.err == ENOENT || rep.err == ENOTDIR) {
                fail_code = "not_found";
                code = 127;
            } else if (rep.err == EACCES || rep.err == EPERM) {
                fail_code = "permission_denied";
            } else {
                fail_code = "exec_failed";
            }
        }
        snprintf(msg, sizeof msg, "%s: %s", what, strerror(rep.err));
        close_pair(in_p);
        close_pair(out_p);
        close_pair(err_p);
        if (master >= 0)
            close(master);
        free(argv);
        env_free(&ev);
        fail_start(s, code, fail_code, msg);
        return;
    }

    /* Running. */
    free(argv);
    env_free(&ev);
    s->pid = pid;
    s->running = true;
    if (timeout_ms > 0)
        s->deadline_ms = now_mono_ms() + timeout_ms;
    if (pty) {
        set_nonblock(master, true);
        s->in_fd = master;
        s->out_fd[1] = master;
    } else {
        if (want_stdin) {
            set_nonblock(in_p[1], true);
            s->in_fd = in_p[1];
        } else {
            s->in_discard = true;
            s->in_closed = true;
        }
        set_nonblock(out_p[0], true);
        set_nonblock(err_p[0], true);
        s->out_fd[1] = out_p[0];
        s->out_fd[2] = err_p[0];
    }
    struct buf b = { 0 };
    sb_printf(&b, "{\"started\":{\"pid\":%d}}", (int)pid);
    session_send_json(s, F_CONTROL, &b);
    buf_free(&b);
    return;

fail_cleanup:
    close_pair(in_p);
    close_pair(out_p);
    close_pair(err_p);
    close_pair(rep_p);
    if (master >= 0)
        close(master);
    free(argv);
    env_free(&ev);
    fail_start(s, 126, fail_code, msg);
}

void exec_on_input_eof(struct session *s)
{
    if (s->pty) {
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

void exec_kill(struct session *s, int sig)
{
    if (s->pid > 0)
        kill(-s->pid, sig);
}

void exec_reaped(struct session *s, int wstatus)
{
    s->reaped = true;
    s->running = false;
    s->wstatus = wstatus;
    s->completed_at_ms = now_unix_ms();
    if (s->pty)
        session_drop_input(s);
}

void exec_check_timeout(struct session *s, int64_t now)
{
    if (!s->deadline_ms || now < s->deadline_ms)
        return;
    s->deadline_ms = 0;
    if (s->running) {
        s->timed_out = true;
        exec_kill(s, SIGKILL);
    } else if (s->out_fd[1] >= 0 || s->out_fd[2] >= 0) {
        /* The process exited but its group still holds the output open. */
        exec_kill(s, SIGKILL);
    }
}

bool exec_maybe_finish(struct session *s)
{
    if (!s->reaped)
        return false;
    for (int st = 1; st <= 2; st++)
        if (s->out_used[st] && !s->out_eof_sent[st])
            return false;
    int ws = s->wstatus;
    if (s->timed_out)
        send_exit_json(s, "timed_out", 124, SIGKILL, NULL, NULL);
    else if (WIFSIGNALED(ws))
        send_exit_json(s, "signaled", 128 + WTERMSIG(ws), WTERMSIG(ws), NULL, NULL);
    else
        send_exit_json(s, "exited", WEXITSTATUS(ws), 0, NULL, NULL);
    session_destroy(s);
    return true;
}

void exec_control(struct session *s, const struct jv *msg)
{
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
        if (s->pty && fd >= 0) {
            struct winsize ws = { .ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols };
            ioctl(fd, TIOCSWINSZ, &ws);
        }
    }
    int r = jfield_int(msg, "signal", 1, 64, &sig);
    if (r < 0) {
        session_fail(s, "bad_request", "signal must be an integer in 1..64");
        return;
    }
    if (r == 1 && !s->reaped)
        exec_kill(s, (int)sig);
}
