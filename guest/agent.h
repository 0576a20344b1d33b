/* The protocol engine: one connection to the host over one byte stream,
 * served by a single-threaded poll() loop (agent.c). The same engine runs as
 * PID 1 in the guest and as an ordinary process in agent mode; it returns
 * what the host asked for, and the caller (boot.c, main.c) acts on it. */
#ifndef MA_AGENT_H
#define MA_AGENT_H

#include <stdbool.h>
#include <stdint.h>

#include "channel.h"
#include "frame.h"
#include "session.h"

/* The agent stops reading the channel while the output queue holds this
 * much (sessions stop reading their processes at OUTQ_SOFT). */
#define OUTQ_HARD (4u << 20)

enum shutdown_action { SD_NONE, SD_POWEROFF, SD_REBOOT };

struct agent {
    bool pid1;
    struct channel ch;
    bool hello_done;
    struct frame_decoder dec;
    struct session_host host; /* the sessions and the output queue */
    int sig_r, sig_w;    /* self-pipe for SIGCHLD/SIGTERM/SIGINT */

    /* microagent.shutdown: what "poweroff" means in PID 1 */
    enum shutdown_action poweroff_means;
    enum shutdown_action shutdown;
    int64_t grace_ms;
    int stop_signal; /* sent to every process on shutdown before grace_ms (image StopSignal) */
    int64_t generation; /* restores of a snapshot this guest went through (in HELLO) */
    /* PID 1's last boot steps (boot.c): run once, after the first HELLO answer has
     * left and before any other frame is read, while the host reacts to the HELLO */
    void (*boot_rest)(struct agent *a);
};

/* Set up signals and the self-pipe. */
int agent_init(struct agent *a, bool pid1);
/* Serve until the host asks for a shutdown or (agent mode) the channel or
 * a signal ends it. Every process is terminated before it returns. Returns
 * SD_POWEROFF or SD_REBOOT (as poweroff_means maps "poweroff") for a
 * shutdown, SD_NONE otherwise. */
enum shutdown_action agent_run(struct agent *a);

#endif
