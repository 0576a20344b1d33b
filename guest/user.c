#define _GNU_SOURCE
#include "user.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

static bool all_digits(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s))
            return false;
    return true;
}

static bool parse_id(const char *s, unsigned long *out)
{
    if (!all_digits(s) || strlen(s) > 10)
        return false;
    unsigned long v = strtoul(s, NULL, 10);
    if (v > 0xFFFFFFFEul)
        return false;
    *out = v;
    return true;
}

/* Split a colon-separated line in place into at most max fields. */
static int split_colon(char *line, char **f, int max)
{
    int n = 0;
    f[n++] = line;
    for (char *p = line; *p && n < max; p++) {
        if (*p == ':') {
            *p = 0;
            f[n++] = p + 1;
        }
    }
    return n;
}

/* Find a passwd entry by name (name != NULL) or uid. */
static bool passwd_lookup(const char *name, uid_t uid, struct user_info *u)
{
    char *text = read_small_file("/etc/passwd", 4 << 20, NULL);
    if (!text)
        return false;
    bool found = false;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *f[7];
        if (split_colon(line, f, 7) < 7)
            continue;
        unsigned long puid, pgid;
        if (!parse_id(f[2], &puid) || !parse_id(f[3], &pgid))
            continue;
        if (name ? strcmp(f[0], name) != 0 : (uid_t)puid != uid)
            continue;
        u->uid = (uid_t)puid;
        u->gid = (gid_t)pgid;
        snprintf(u->name, sizeof u->name, "%s", f[0]);
        snprintf(u->home, sizeof u->home, "%s", *f[5] ? f[5] : "/");
        snprintf(u->shell, sizeof u->shell, "%s", *f[6] ? f[6] : "/bin/sh");
        found = true;
        break;
    }
    free(text);
    return found;
}

static void add_group(struct user_info *u, gid_t g)
{
    for (int i = 0; i < u->ngroups; i++)
        if (u->groups[i] == g)
            return;
    if (u->ngroups < USER_MAX_GROUPS)
        u->groups[u->ngroups++] = g;
}

/* Resolve a group name to a gid, and/or collect the groups listing user. */
static bool group_scan(const char *group_name, gid_t *gid_out, struct user_info *member_of)
{
    char *text = read_small_file("/etc/group", 4 << 20, NULL);
    if (!text)
        return false;
    bool found = false;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *f[4];
        if (split_colon(line, f, 4) < 4)
            continue;
        unsigned long g;
        if (!parse_id(f[2], &g))
            continue;
        if (group_name && strcmp(f[0], group_name) == 0) {
            *gid_out = (gid_t)g;
            found = true;
        }
        if (member_of && member_of->name[0]) {
            char *s2 = NULL;
            for (char *m = strtok_r(f[3], ",", &s2); m; m = strtok_r(NULL, ",", &s2))
                if (strcmp(m, member_of->name) == 0)
                    add_group(member_of, (gid_t)g);
        }
    }
    free(text);
    return found;
}

static int user_lookup(const char *spec, struct user_info *u, const char **code, char *msg, size_t msglen)
{
    memset(u, 0, sizeof *u);
    *code = NULL;
    char upart[128] = "", gpart[128] = "";
    bool have_group = false;
    if (spec) {
        if (!*spec || strlen(spec) >= sizeof upart) {
            *code = "bad_user";
            snprintf(msg, msglen, "invalid user '%s'", spec);
            return -1;
        }
        const char *colon = strchr(spec, ':');
        if (colon) {
            snprintf(upart, sizeof upart, "%.*s", (int)(colon - spec), spec);
            snprintf(gpart, sizeof gpart, "%s", colon + 1);
            have_group = true;
        } else {
            snprintf(upart, sizeof upart, "%s", spec);
        }
    }

    unsigned long id;
    if (!spec) {
        uid_t me = geteuid();
        if (!passwd_lookup(NULL, me, u)) {
            u->uid = me;
            u->gid = getegid();
        }
    } else if (parse_id(upart, &id)) {
        if (!passwd_lookup(NULL, (uid_t)id, u)) {
            u->uid = (uid_t)id;
            u->gid = 0; /* like Docker: an unknown uid gets gid 0 */
        }
    } else if (!passwd_lookup(upart, 0, u)) {
        if (strcmp(upart, "root") == 0) {
            u->uid = 0;
            u->gid = 0;
            snprintf(u->name, sizeof u->name, "root");
            snprintf(u->home, sizeof u->home, "/root");
        } else {
            *code = "bad_user";
            snprintf(msg, msglen, "no user '%s' in /etc/passwd", upart);
            return -1;
        }
    }
    if (!u->home[0])
        snprintf(u->home, sizeof u->home, "%s", u->uid == 0 ? "/root" : "/");
    if (!u->shell[0])
        snprintf(u->shell, sizeof u->shell, "/bin/sh");

    if (have_group) {
        gid_t g;
        if (parse_id(gpart, &id)) {
            u->gid = (gid_t)id;
        } else if (*gpart && group_scan(gpart, &g, NULL)) {
            u->gid = g;
        } else {
            *code = "bad_user";
            snprintf(msg, msglen, "no group '%s' in /etc/group", gpart);
            return -1;
        }
    }
    u->ngroups = 0;
    add_group(u, u->gid);
    if (u->name[0])
        group_scan(NULL, NULL, u);

    if (geteuid() == 0) {
        u->do_switch = true;
    } else if (u->uid == geteuid() && (!have_group || u->gid == getegid())) {
        u->do_switch = false;
    } else {
        *code = "permission_denied";
        snprintf(msg, msglen, "cannot switch to user '%s': not running as root", spec ? spec : "");
        return -1;
    }
    return 0;
}

/* What a resolution read: /etc/passwd and /etc/group as they were (a changed
 * file has another inode, size, mtime or ctime). */
struct file_version {
    bool present;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime, ctime;
};

static void file_version(const char *path, struct file_version *v)
{
    struct stat st;
    memset(v, 0, sizeof *v);
    if (stat(path, &st) == 0)
        *v = (struct file_version){ true, st.st_dev, st.st_ino, st.st_size, st.st_mtim, st.st_ctim };
}

static bool same_version(const struct file_version *a, const struct file_version *b)
{
    return a->present == b->present && a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec &&
           a->ctime.tv_sec == b->ctime.tv_sec && a->ctime.tv_nsec == b->ctime.tv_nsec;
}

/* The last successful resolution: most execs ask for the same user (often
 * none), so two stat calls replace reading and parsing both files. */
static struct {
    bool valid, spec_null;
    char spec[128];
    uid_t euid;
    gid_t egid;
    struct file_version passwd, group;
    struct user_info u;
} g_last;

int user_resolve(const char *spec, struct user_info *u, const char **code, char *msg, size_t msglen)
{
    struct file_version pw, gr;
    file_version("/etc/passwd", &pw);
    file_version("/etc/group", &gr);
    uid_t euid = geteuid();
    gid_t egid = getegid();
    if (g_last.valid && g_last.spec_null == !spec && (!spec || strcmp(g_last.spec, spec) == 0) &&
        g_last.euid == euid && g_last.egid == egid && same_version(&g_last.passwd, &pw) &&
        same_version(&g_last.group, &gr)) {
        *u = g_last.u;
        *code = NULL;
        return 0;
    }
    int r = user_lookup(spec, u, code, msg, msglen);
    g_last.valid = r == 0 && (!spec || strlen(spec) < sizeof g_last.spec);
    if (g_last.valid) {
        g_last.spec_null = !spec;
        snprintf(g_last.spec, sizeof g_last.spec, "%s", spec ? spec : "");
        g_last.euid = euid;
        g_last.egid = egid;
        g_last.passwd = pw;
        g_last.group = gr;
        g_last.u = *u;
    }
    return r;
}
