/* The workspace's service (docs/services.md): one long-running command that
 * guest init starts on every boot from the config disk's "service" object,
 * restarts by its policy (never, on-failure, always) with a backoff of 1 s
 * doubling to 30 s, and whose stdout and stderr it keeps in a bounded,
 * rotated log. Its state is a small JSON file the host reads with a get.
 * Everything here runs in PID 1's loop (agent.c); no-ops unless configured. */
#ifndef MA_SERVICE_H
#define MA_SERVICE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "json.h"
#include "session.h"

#define SERVICE_DIR "/run/microagent"
#define SERVICE_LOG SERVICE_DIR "/service.log"        /* rotated to service.log.1 */
#define SERVICE_STATE SERVICE_DIR "/service.json"
#define SERVICE_LOG_MAX (512u << 10)                  /* per file: at most 1 MiB in all */

/* {"command": "...", "restart": "never|on-failure|always", "user": "...",
 * "workdir": "..."} from the config disk; starts the service. h gives the
 * per-boot env. A malformed object is logged and ignored. */
void service_configure(const struct jv *svc, const struct session_host *h);
/* The read end of the service's output pipe to poll for POLLIN, or -1. */
int service_fd(void);
/* The output pipe is readable (or hung up): copy what it holds to the log. */
void service_on_output(void);
/* Milliseconds until a restart is due (-1: none pending). */
int service_timeout_ms(int64_t now);
/* Start the service again when its backoff has passed. */
void service_tick(int64_t now);
/* A reaped child: true when it was the service (its exit is recorded and a
 * restart scheduled by the policy). */
bool service_child_exited(pid_t pid, int wstatus);
/* Shutting down: no more restarts (the caller signals every process). */
void service_stop(void);

#endif
