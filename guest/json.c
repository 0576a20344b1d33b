#define _GNU_SOURCE
#include "json.h"

#include <stdlib.h>
#include <string.h>

#define JSON_MAX_DEPTH 32
#define ARENA_BLOCK 8192

struct jarena {
    struct jarena *next;
    size_t used, cap;
    /* followed by cap bytes, max_align_t aligned */
};

static void *arena_alloc(struct jarena **head, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    struct jarena *a = *head;
    if (!a || a->cap - a->used < n) {
        size_t cap = n > ARENA_BLOCK ? n : ARENA_BLOCK;
        size_t hdr = (sizeof(struct jarena) + 15) & ~(size_t)15;
        struct jarena *na = malloc(hdr + cap);
        if (!na)
            return NULL;
        na->next = a;
        na->used = 0;
        na->cap = cap;
        *head = na;
        a = na;
    }
    size_t hdr = (sizeof(struct jarena) + 15) & ~(size_t)15;
    void *p = (char *)a + hdr + a->used;
    a->used += n;
    return p;
}

struct parser {
    const char *p, *end;
    struct jarena *arena;
};

static void skip_ws(struct parser *ps)
{
    while (ps->p < ps->end &&
           (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static struct jv *new_val(struct parser *ps, enum jtype t)
{
    struct jv *v = arena_alloc(&ps->arena, sizeof *v);
    if (!v)
        return NULL;
    memset(v, 0, sizeof *v);
    v->type = t;
    return v;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int read_hex4(struct parser *ps, unsigned *out)
{
    if (ps->end - ps->p < 4)
        return -1;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(ps->p[i]);
        if (h < 0)
            return -1;
        v = v * 16 + (unsigned)h;
    }
    ps->p += 4;
    *out = v;
    return 0;
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* At the opening quote. Decoded output is never longer than the raw text. */
static int parse_string(struct parser *ps, char **out, size_t *outlen)
{
    ps->p++; /* the quote */
    const char *start = ps->p;
    const char *q = start;
    while (q < ps->end && *q != '"') {
        if (*q == '\\') {
            q++;
            if (q >= ps->end)
                return -1;
        }
        q++;
    }
    if (q >= ps->end)
        return -1;
    size_t raw = (size_t)(q - start);
    char *o = arena_alloc(&ps->arena, raw + 1);
    if (!o)
        return -1;
    size_t n = 0;
    while (ps->p < q) {
        unsigned char c = (unsigned char)*ps->p;
        if (c < 0x20)
            return -1;
        if (c != '\\') {
            o[n++] = (char)c;
            ps->p++;
            continue;
        }
        ps->p++;
        char e = *ps->p++;
        switch (e) {
        case '"': o[n++] = '"'; break;
        case '\\': o[n++] = '\\'; break;
        case '/': o[n++] = '/'; break;
        case 'b': o[n++] = '\b'; break;
        case 'f': o[n++] = '\f'; break;
        case 'n': o[n++] = '\n'; break;
        case 'r': o[n++] = '\r'; break;
        case 't': o[n++] = '\t'; break;
        case 'u': {
            unsigned cp;
            if (read_hex4(ps, &cp) < 0 || ps->p > q)
                return -1;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned lo;
                if (q - ps->p >= 6 && ps->p[0] == '\\' && ps->p[1] == 'u') {
                    ps->p += 2;
                    if (read_hex4(ps, &lo) < 0 || lo < 0xDC00 || lo > 0xDFFF)
                        return -1;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else {
                    cp = 0xFFFD; /* lone surrogate */
                }
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                cp = 0xFFFD;
            }
            n += put_utf8(o + n, cp);
            break;
        }
        default:
            return -1;
        }
    }
    ps->p = q + 1;
    o[n] = 0;
    *out = o;
    *outlen = n;
    return 0;
}

static struct jv *parse_value(struct parser *ps, int depth);

static struct jv *parse_number(struct parser *ps)
{
    const char *s = ps->p;
    bool neg = false, integral = true, overflow = false;
    uint64_t mag = 0;
    if (ps->p < ps->end && *ps->p == '-') {
        neg = true;
        ps->p++;
    }
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9')
        return NULL;
    if (*ps->p == '0') {
        ps->p++;
    } else {
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
            unsigned d = (unsigned)(*ps->p - '0');
            if (mag > (UINT64_MAX - d) / 10)
                overflow = true;
            else
                mag = mag * 10 + d;
            ps->p++;
        }
    }
    if (ps->p < ps->end && *ps->p == '.') {
        integral = false;
        ps->p++;
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9')
            return NULL;
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
            ps->p++;
    }
    if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
        integral = false;
        ps->p++;
        if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-'))
            ps->p++;
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9')
            return NULL;
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
            ps->p++;
    }
    (void)s;
    if (!integral || overflow || (!neg && mag > (uint64_t)INT64_MAX) ||
        (neg && mag > (uint64_t)INT64_MAX + 1))
        return new_val(ps, J_NUM);
    struct jv *v = new_val(ps, J_INT);
    if (!v)
        return NULL;
    if (neg)
        v->i = mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag;
    else
        v->i = (int64_t)mag;
    return v;
}

static int match_lit(struct parser *ps, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, lit, n) != 0)
        return -1;
    ps->p += n;
    return 0;
}

static struct jv *parse_container(struct parser *ps, int depth, bool is_obj)
{
    struct jv *v = new_val(ps, is_obj ? J_OBJ : J_ARR);
    if (!v)
        return NULL;
    ps->p++; /* [ or { */
    struct jv **tail = &v->child;
    skip_ws(ps);
    char close = is_obj ? '}' : ']';
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        return v;
    }
    for (;;) {
        char *key = NULL;
        skip_ws(ps);
        if (is_obj) {
            size_t klen;
            if (ps->p >= ps->end || *ps->p != '"' || parse_string(ps, &key, &klen) < 0)
                return NULL;
            /* Lookups compare names as C strings: "kind\u0000x" would
             * answer for "kind". */
            if (strlen(key) != klen)
                return NULL;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':')
                return NULL;
            ps->p++;
        }
        struct jv *item = parse_value(ps, depth + 1);
        if (!item)
            return NULL;
        item->key = key;
        *tail = item;
        tail = &item->next;
        v->len++;
        skip_ws(ps);
        if (ps->p >= ps->end)
            return NULL;
        if (*ps->p == ',') {
            ps->p++;
            continue;
        }
        if (*ps->p == close) {
            ps->p++;
            return v;
        }
        return NULL;
    }
}

static struct jv *parse_value(struct parser *ps, int depth)
{
    if (depth > JSON_MAX_DEPTH)
        return NULL;
    skip_ws(ps);
    if (ps->p >= ps->end)
        return NULL;
    switch (*ps->p) {
    case '{':
        return parse_container(ps, depth, true);
    case '[':
        return parse_container(ps, depth, false);
    case '"': {
        struct jv *v = new_val(ps, J_STR);
        if (!v || parse_string(ps, &v->s, &v->len) < 0)
            return NULL;
        return v;
    }
    case 't': {
        if (match_lit(ps, "true") < 0)
            return NULL;
        struct jv *v = new_val(ps, J_BOOL);
        if (v)
            v->b = true;
        return v;
    }
    case 'f': {
        if (match_lit(ps, "false") < 0)
            return NULL;
        return new_val(ps, J_BOOL);
    }
    case 'n':
        if (match_lit(ps, "null") < 0)
            return NULL;
        return new_val(ps, J_NULL);
    default:
        return parse_number(ps);
    }
}

int json_parse(const char *text, size_t len, struct jdoc *doc)
{
    struct parser ps = { .p = text, .end = text + len, .arena = NULL };
    doc->root = NULL;
    doc->arena = NULL;
    if (!text)
        return -1;
    skip_ws(&ps);
    struct jv *root = NULL;
    if (ps.p < ps.end && *ps.p == '{')
        root = parse_value(&ps, 0);
    if (root) {
        skip_ws(&ps);
        if (ps.p != ps.end)
            root = NULL;
    }
    doc->arena = ps.arena;
    if (!root) {
        json_free(doc);
        return -1;
    }
    doc->root = root;
    return 0;
}

void json_free(struct jdoc *doc)
{
    struct jarena *a = doc->arena;
    while (a) {
        struct jarena *n = a->next;
        free(a);
        a = n;
    }
    doc->arena = NULL;
    doc->root = NULL;
}

struct jv *jget(const struct jv *obj, const char *key)
{
    if (!obj || obj->type != J_OBJ)
        return NULL;
    struct jv *found = NULL;
    for (struct jv *c = obj->child; c; c = c->next)
        if (c->key && strcmp(c->key, key) == 0)
            found = c; /* last one wins, like most parsers */
    return found;
}

bool jstr_clean(const struct jv *v)
{
    return v && v->type == J_STR && strlen(v->s) == v->len;
}

int jfield_str(const struct jv *obj, const char *key, const char **out)
{
    struct jv *v = jget(obj, key);
    if (!v || v->type == J_NULL)
        return 0;
    if (!jstr_clean(v))
        return -1;
    *out = v->s;
    return 1;
}

int jfield_int(const struct jv *obj, const char *key, int64_t min, int64_t max, int64_t *out)
{
    struct jv *v = jget(obj, key);
    if (!v || v->type == J_NULL)
        return 0;
    if (v->type != J_INT || v->i < min || v->i > max)
        return -1;
    *out = v->i;
    return 1;
}

int jfield_bool(const struct jv *obj, const char *key, bool *out)
{
    struct jv *v = jget(obj, key);
    if (!v || v->type == J_NULL)
        return 0;
    if (v->type != J_BOOL)
        return -1;
    *out = v->b;
    return 1;
}

int jfield_strv(const struct jv *obj, const char *key, const char ***out, size_t *n)
{
    struct jv *v = jget(obj, key);
    if (!v || v->type == J_NULL)
        return 0;
    if (v->type != J_ARR)
        return -1;
    for (struct jv *c = v->child; c; c = c->next)
        if (!jstr_clean(c))
            return -1;
    const char **vec = calloc(v->len + 1, sizeof *vec);
    if (!vec)
        return -1;
    size_t i = 0;
    for (struct jv *c = v->child; c; c = c->next)
        vec[i++] = c->s;
    vec[i] = NULL;
    *out = vec;
    if (n)
        *n = i;
    return 1;
}

/* Length of a valid UTF-8 sequence at s (at most n bytes), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    unsigned cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
        return 0;
    return len;
}

int jw_strn(struct buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    if (buf_append(b, "\"", 1) < 0)
        return -1;
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned char c = u[i];
        char esc[8];
        size_t elen = 0;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            elen = 2;
        } else if (c == '\n') {
            memcpy(esc, "\\n", 2);
            elen = 2;
        } else if (c == '\t') {
            memcpy(esc, "\\t", 2);
            elen = 2;
        } else if (c == '\r') {
            memcpy(esc, "\\r", 2);
            elen = 2;
        } else if (c < 0x20 || c == 0x7F) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            elen = 6;
        }
        if (elen) {
            if (buf_append(b, esc, elen) < 0)
                return -1;
            i++;
            continue;
        }
        size_t l = utf8_seq(u + i, n - i);
        if (l == 0) {
            /* invalid UTF-8: replace the byte with U+FFFD */
            if (buf_append(b, "\\ufffd", 6) < 0)
                return -1;
            i++;
            continue;
        }
        if (buf_append(b, u + i, l) < 0)
            return -1;
        i += l;
    }
    return buf_append(b, "\"", 1);
}

int jw_str(struct buf *b, const char *s) { return jw_strn(b, s ? s : "", s ? strlen(s) : 0); }
