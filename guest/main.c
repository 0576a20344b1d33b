/* microagent-init: PID 1 of a microagent guest, or the same protocol engine
 * as an ordinary process (--agent). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"
#include "boot.h"
#include "channel.h"
#include "util.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: microagent-init                      (as PID 1 in a microagent guest)\n"
            "       microagent-init --agent [--fd N | --listen PATH | --connect PATH | --stdio]\n"
            "       microagent-init --version\n"
            "\n"
            "--agent serves the guest channel protocol (docs/protocol.md) as an ordinary\n"
            "process: no mounts, no module loading, no power-off. Default transport: --stdio.\n");
}

int main(int argc, char **argv)
{
    if (getpid() == 1)
        pid1_main();

    bool agent_mode = false;
    const char *fd_arg = NULL, *listen_path = NULL, *connect_path = NULL;
    bool stdio = false;
    int transports = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--agent") == 0) {
            agent_mode = true;
        } else if (strcmp(a, "--fd") == 0 && next) {
            fd_arg = next;
            i++;
            transports++;
        } else if (strcmp(a, "--listen") == 0 && next) {
            listen_path = next;
            i++;
            transports++;
        } else if (strcmp(a, "--connect") == 0 && next) {
            connect_path = next;
            i++;
            transports++;
        } else if (strcmp(a, "--stdio") == 0) {
            stdio = true;
            transports++;
        } else if (strcmp(a, "--version") == 0) {
            printf("%s\n", MA_AGENT_NAME);
            return 0;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "microagent-init: unknown or incomplete argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!agent_mode || transports > 1) {
        usage(stderr);
        return 2;
    }
    ensure_std_fds();

    static struct agent agent;
    if (agent_init(&agent, false) < 0) {
        ma_log("agent setup failed");
        return 1;
    }
    int r;
    if (fd_arg) {
        char *end;
        long fd = strtol(fd_arg, &end, 10);
        if (*end || fd < 0 || fd > 1 << 20) {
            ma_log("bad --fd '%s'", fd_arg);
            return 2;
        }
        r = channel_use_fd(&agent.ch, (int)fd);
    } else if (listen_path) {
        r = channel_listen_unix(&agent.ch, listen_path);
    } else if (connect_path) {
        r = channel_connect_unix(&agent.ch, connect_path);
    } else {
        (void)stdio;
        r = channel_use_stdio(&agent.ch);
    }
    if (r < 0)
        return 1;
    ma_log("channel ready");
    agent_run(&agent); /* a shutdown request ends agent mode like a closed channel */
    return 0;
}
