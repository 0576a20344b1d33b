/* A tiny JSON reader and writer for the flat objects of the channel
 * protocol. The reader never crashes on any input: it bounds nesting depth,
 * checks every length, and reports failure by returning NULL. All memory of
 * one parse lives in one arena freed by json_free(). */
#ifndef MA_JSON_H
#define MA_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

enum jtype { J_NULL, J_BOOL, J_INT, J_NUM, J_STR, J_ARR, J_OBJ };

struct jv {
    enum jtype type;
    bool b;         /* J_BOOL */
    int64_t i;      /* J_INT (integers that fit int64) */
    char *s;        /* J_STR: decoded, NUL-terminated */
    size_t len;     /* J_STR: byte length (may contain NULs); J_ARR/J_OBJ: count */
    char *key;      /* member name when inside an object (never holds a NUL) */
    struct jv *child, *next;
};

struct jarena;

struct jdoc {
    struct jv *root;
    struct jarena *arena;
};

/* Parse a complete JSON text whose top level is an object.
 * Returns 0 and fills doc, or -1 (doc is then empty). */
int json_parse(const char *text, size_t len, struct jdoc *doc);
void json_free(struct jdoc *doc);

/* Lookups on an object; NULL when absent or obj is not an object. */
struct jv *jget(const struct jv *obj, const char *key);

/* Typed field readers. Each returns 0 when the field is absent (out keeps
 * the default the caller put there), 1 when present with the right type,
 * and -1 when present with a wrong type or an invalid value. */
int jfield_str(const struct jv *obj, const char *key, const char **out);
int jfield_int(const struct jv *obj, const char *key, int64_t min, int64_t max, int64_t *out);
int jfield_bool(const struct jv *obj, const char *key, bool *out);
/* Array of strings without embedded NULs: out gets a malloc'ed,
 * NULL-terminated vector of pointers into the document. */
int jfield_strv(const struct jv *obj, const char *key, const char ***out, size_t *n);

/* True if a J_STR has no embedded NUL bytes. */
bool jstr_clean(const struct jv *v);

/* Writer helpers: append JSON to a struct buf. */
int jw_str(struct buf *b, const char *s);
int jw_strn(struct buf *b, const char *s, size_t n);

#endif
