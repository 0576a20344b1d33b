/* libFuzzer harness for the guest's JSON reader and writer (json.c).
 *
 * Input: any bytes, parsed as a channel JSON payload. Beyond "no crash, no
 * leak, no UB" it checks the parse tree's invariants, the typed field
 * readers on every member, and that the writer's output always parses back:
 * y = parse(write(x)) must survive a second round trip unchanged, and equal
 * x itself when x is ASCII. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_check.h"
#include "json.h"

/* Write s as {"k":<s>} and parse it back; returns the decoded copy
 * (malloc'ed, length in *outlen). */
static char *round_trip(const char *s, size_t n, size_t *outlen)
{
    struct buf b = { 0 };
    CHECK(sb_puts(&b, "{\"k\":") == 0);
    CHECK(jw_strn(&b, s, n) == 0);
    CHECK(sb_puts(&b, "}") == 0);
    struct jdoc doc;
    CHECK(json_parse((const char *)b.data + b.off, buf_used(&b), &doc) == 0);
    struct jv *v = jget(doc.root, "k");
    CHECK(v && v->type == J_STR && v->s[v->len] == 0);
    char *copy = malloc(v->len + 1);
    CHECK(copy);
    memcpy(copy, v->s, v->len + 1);
    *outlen = v->len;
    json_free(&doc);
    buf_free(&b);
    return copy;
}

static void check_writer(const char *s, size_t n)
{
    size_t ylen, zlen;
    char *y = round_trip(s, n, &ylen);
    char *z = round_trip(y, ylen, &zlen);
    CHECK(zlen == ylen && memcmp(y, z, ylen) == 0);
    bool ascii = true;
    for (size_t i = 0; i < n; i++)
        ascii = ascii && (unsigned char)s[i] < 0x80;
    if (ascii)
        CHECK(ylen == n && memcmp(y, s, n) == 0);
    free(y);
    free(z);
}

static void walk(const struct jv *v, int depth)
{
    CHECK(depth <= 64);
    switch (v->type) {
    case J_STR:
        CHECK(v->s && v->s[v->len] == 0);
        (void)jstr_clean(v);
        check_writer(v->s, v->len);
        break;
    case J_ARR:
    case J_OBJ: {
        size_t count = 0;
        for (const struct jv *c = v->child; c; c = c->next) {
            CHECK(v->type == J_OBJ ? c->key != NULL : c->key == NULL);
            walk(c, depth + 1);
            count++;
        }
        CHECK(count == v->len);
        break;
    }
    default:
        break;
    }
}

/* Every typed reader on every member name, as the request parsers use them. */
static void read_fields(const struct jv *obj)
{
    for (const struct jv *c = obj->child; c; c = c->next) {
        const char *str = NULL;
        int64_t i = 0;
        bool b = false;
        const char **vec = NULL;
        size_t n = 0;
        CHECK(jget(obj, c->key) != NULL);
        if (jfield_str(obj, c->key, &str) == 1)
            CHECK(strlen(str) == jget(obj, c->key)->len);
        if (jfield_int(obj, c->key, 0, 65535, &i) == 1)
            CHECK(i >= 0 && i <= 65535);
        (void)jfield_int(obj, c->key, INT64_MIN, INT64_MAX, &i);
        (void)jfield_bool(obj, c->key, &b);
        if (jfield_strv(obj, c->key, &vec, &n) == 1) {
            for (size_t k = 0; k < n; k++)
                CHECK(vec[k] && strlen(vec[k]) < (size_t)1 << 20);
            CHECK(vec[n] == NULL);
            free(vec);
        }
        check_writer(c->key, strlen(c->key));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct jdoc doc;
    if (json_parse((const char *)data, size, &doc) == 0) {
        CHECK(doc.root && doc.root->type == J_OBJ);
        walk(doc.root, 0);
        read_fields(doc.root);
        json_free(&doc);
    } else {
        CHECK(doc.root == NULL && doc.arena == NULL);
    }
    check_writer((const char *)data, size);
    return 0;
}
