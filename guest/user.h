/* User resolution from the guest's /etc/passwd and /etc/group (no NSS). */
#ifndef MA_USER_H
#define MA_USER_H

#include <stdbool.h>
#include <sys/types.h>

#define USER_MAX_GROUPS 64

struct user_info {
    uid_t uid;
    gid_t gid;
    char name[64];       /* empty when the uid has no passwd entry */
    char home[256];
    char shell[256];
    gid_t groups[USER_MAX_GROUPS];
    int ngroups;
    bool do_switch;      /* call setgroups/setgid/setuid in the child */
};

/* spec: NULL (the current user), "root", a name, "UID", "UID:GID",
 * "name:group". Returns 0, or -1 with code ("bad_user",
 * "permission_denied") and a message. */
int user_resolve(const char *spec, struct user_info *u, const char **code, char *msg, size_t msglen);

#endif
