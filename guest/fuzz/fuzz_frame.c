/* libFuzzer harness for the guest's frame decoder and writers (frame.c).
 *
 * Input: raw channel bytes. The decoder must report the same events whether
 * the bytes arrive at once or split into arbitrary reads (it never loses
 * sync), every payload must be readable to its announced length, and every
 * frame re-encoded with frame_put must decode to itself. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"
#include "fuzz_check.h"
#include "fuzz_chunks.h"

struct event {
    uint32_t session, len;
    uint8_t type;
    bool oversized;
    uint64_t digest; /* FNV-1a of the payload */
};

/* Events seen by one decoder: at most one per 9 input bytes. */
struct log {
    struct event *ev;
    size_t n, cap;
    bool reencode;
};

static struct log *log_new(size_t input_size)
{
    struct log *l = calloc(1, sizeof *l);
    CHECK(l);
    l->cap = input_size / FRAME_HEADER + 1;
    l->ev = calloc(l->cap, sizeof *l->ev);
    CHECK(l->ev);
    return l;
}

static void log_free(struct log *l)
{
    free(l->ev);
    free(l);
}

static bool same_event(const struct event *a, const struct event *b)
{
    return a->session == b->session && a->len == b->len && a->type == b->type &&
           a->oversized == b->oversized && a->digest == b->digest;
}

static uint64_t digest(const uint8_t *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static void record(struct log *l, struct event e)
{
    CHECK(l->n < l->cap);
    l->ev[l->n++] = e;
}

static void on_frame(void *ctx, const struct frame *f);
static void on_oversized(void *ctx, uint32_t session, uint8_t type, uint32_t len);

/* frame_put then decode: exactly the same single frame back. */
static void check_reencode(const struct frame *f)
{
    struct buf q = { 0 };
    CHECK(frame_put(&q, f->session, f->type, f->payload, f->len) == 0);
    CHECK(buf_used(&q) == FRAME_HEADER + f->len);
    struct log *again = log_new(buf_used(&q));
    struct frame_decoder d = { 0 };
    struct frame_sink sink = { again, on_frame, on_oversized };
    CHECK(frame_decoder_feed(&d, q.data + q.off, buf_used(&q), &sink) == 0);
    CHECK(again->n == 1 && !again->ev[0].oversized);
    CHECK(again->ev[0].session == f->session && again->ev[0].type == f->type);
    CHECK(again->ev[0].len == f->len && again->ev[0].digest == digest(f->payload, f->len));
    frame_decoder_free(&d);
    buf_free(&q);
    log_free(again);
}

static void on_frame(void *ctx, const struct frame *f)
{
    struct log *l = ctx;
    CHECK(f->len <= FRAME_MAX_PAYLOAD);
    CHECK(f->payload != NULL);
    record(l, (struct event){ f->session, f->len, f->type, false, digest(f->payload, f->len) });
    if (l->reencode)
        check_reencode(f);
}

static void on_oversized(void *ctx, uint32_t session, uint8_t type, uint32_t len)
{
    CHECK(len > FRAME_MAX_PAYLOAD);
    record(ctx, (struct event){ session, len, type, true, 0 });
}

/* The writers for DATA, WINDOW and ERROR produce frames the decoder and
 * the JSON reader accept. */
static void check_writers(const uint8_t *data, size_t size)
{
    struct buf q = { 0 };
    size_t n = size < DATA_CHUNK ? size : DATA_CHUNK;
    CHECK(frame_put_data(&q, 7, STREAM_STDOUT, data, n) == 0);
    CHECK(frame_put_eof(&q, 7, STREAM_STDERR) == 0);
    CHECK(frame_put_window(&q, 7, STREAM_STDIN, size > 4 ? be32(data) : 0) == 0);
    char *text = malloc(n + 1);
    CHECK(text);
    memcpy(text, data, n);
    text[n] = 0;
    CHECK(frame_put_error(&q, 7, text, size & 1 ? text : NULL) == 0);
    free(text);

    struct log *l = log_new(buf_used(&q));
    struct frame_decoder d = { 0 };
    struct frame_sink sink = { l, on_frame, on_oversized };
    CHECK(frame_decoder_feed(&d, q.data + q.off, buf_used(&q), &sink) == 0);
    CHECK(l->n == 4);
    CHECK(l->ev[0].type == F_DATA && l->ev[0].len == n + 1);
    CHECK(l->ev[1].type == F_DATA && l->ev[1].len == 1);
    CHECK(l->ev[2].type == F_WINDOW && l->ev[2].len == 5);
    CHECK(l->ev[3].type == F_ERROR);
    frame_decoder_free(&d);
    buf_free(&q);
    log_free(l);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct log *whole = log_new(size), *split = log_new(size);
    whole->reencode = true;

    struct frame_decoder d = { 0 };
    struct frame_sink sink = { whole, on_frame, on_oversized };
    CHECK(frame_decoder_feed(&d, data, size, &sink) == 0);
    frame_decoder_free(&d);

    /* The same bytes in arbitrary reads, through a decoder that has been
     * reset once before (as after a reconnect). */
    struct frame_decoder d2 = { 0 };
    struct frame_sink sink2 = { split, on_frame, on_oversized };
    CHECK(frame_decoder_feed(&d2, (const uint8_t *)"\0\0\0\5", 4, &sink2) == 0);
    frame_decoder_reset(&d2);
    struct chunker c;
    chunker_init(&c, data, size);
    for (size_t off = 0; off < size;) {
        size_t k = chunker_next(&c, size - off);
        CHECK(frame_decoder_feed(&d2, data + off, k, &sink2) == 0);
        off += k;
    }
    frame_decoder_free(&d2);

    CHECK(whole->n == split->n);
    for (size_t i = 0; i < whole->n; i++)
        CHECK(same_event(&whole->ev[i], &split->ev[i]));
    log_free(whole);
    log_free(split);

    check_writers(data, size);
    return 0;
}
