/* The protocol engine: one connection to the host over one byte stream,
 * served by a single-threaded poll() loop (agent.c). The same engine runs as
 * PID 1 in the guest and as an ordinary process in agent mode. */
#ifndef MA_AGENT_H
#define MA_AGENT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "frame.h"
#include "session.h"
#include "util.h"

/* Output queue bounds: sessions stop reading their processes above SOFT;
 * the agent stops reading the channel above HARD. */
#define OUTQ_SOFT (1u << 20)
#define OUTQ_HARD (4u << 20)

enum channel_kind {
    CH_FD,      /* a connected stream (socketpair, --connect, --stdio) */
    CH_LISTEN,  /* a listening socket (Unix or vsock); one host at a time */
    CH_VPORT,   /* a virtio-serial port; POLLHUP = host away */
};

struct channel {
    enum channel_kind kind;
    int rfd, wfd;        /* the connection (-1 when none) */
    int listen_fd;       /* CH_LISTEN */
    bool connected;
    bool exit_on_eof;    /* agent --fd/--connect/--stdio */
};

enum shutdown_action { SD_NONE, SD_POWEROFF, SD_REBOOT };

struct agent {
    bool pid1;
    struct channel ch;
    bool hello_done;
    struct frame_decoder dec;
    struct buf outq;
    struct session *sessions;
    int sig_r, sig_w;    /* self-pipe for SIGCHLD/SIGTERM/SIGINT */
    volatile int got_term;

    /* From the per-boot config. */
    char **boot_env;
    size_t n_boot_env;

    /* microagent.shutdown: what "poweroff" means in PID 1 */
    enum shutdown_action poweroff_means;
    enum shutdown_action shutdown;
    int64_t grace_ms;
    int stop_signal; /* sent to every process on shutdown before grace_ms (image StopSignal) */
};

/* Set up signals and the self-pipe. */
int agent_init(struct agent *a, bool pid1);
/* Serve until shutdown; returns the exit status for agent mode. PID 1 never
 * returns (it powers off). */
int agent_run(struct agent *a);

/* Queue helpers used by the sessions. */
void agent_queue_error(struct agent *a, uint32_t session, const char *code, const char *message);
/* Kill all sessions (SIGKILL to their process groups) and forget them. */
void agent_reset_sessions(struct agent *a);

/* Power off / reboot as PID 1 (boot.c). Never returns. */
void pid1_poweroff(enum shutdown_action how) __attribute__((noreturn));
/* Terminate every process (PID 1: all; agent: sessions): sig, then SIGKILL after grace_ms. */
void agent_terminate_all(struct agent *a, int sig, int64_t grace_ms);

#endif
