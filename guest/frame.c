#define _GNU_SOURCE
#include "frame.h"

#include <stdlib.h>
#include <string.h>

#include "json.h"

void frame_decoder_reset(struct frame_decoder *d)
{
    d->hdr_have = 0;
    d->in_payload = false;
    d->skip_left = 0;
    d->payload_have = 0;
    /* Give back a big payload buffer. */
    if (d->payload_cap > 64 * 1024) {
        free(d->payload);
        d->payload = NULL;
        d->payload_cap = 0;
    }
}

void frame_decoder_free(struct frame_decoder *d)
{
    free(d->payload);
    memset(d, 0, sizeof *d);
}

/* Copy up to want bytes from *p to dst, advancing *p and *n. */
static size_t take(uint8_t *dst, size_t want, const uint8_t **p, size_t *n)
{
    size_t k = want < *n ? want : *n;
    memcpy(dst, *p, k);
    *p += k;
    *n -= k;
    return k;
}

int frame_decoder_feed(struct frame_decoder *d, const uint8_t *p, size_t n,
                       const struct frame_sink *sink)
{
    while (n > 0) {
        if (d->skip_left > 0) {
            size_t k = d->skip_left < n ? (size_t)d->skip_left : n;
            d->skip_left -= k;
            p += k;
            n -= k;
            continue;
        }
        if (!d->in_payload) {
            d->hdr_have += take(d->hdr + d->hdr_have, FRAME_HEADER - d->hdr_have, &p, &n);
            if (d->hdr_have < FRAME_HEADER)
                break;
            d->hdr_have = 0;
            d->len = be32(d->hdr);
            d->session = be32(d->hdr + 4);
            d->type = d->hdr[8];
            if (d->len > FRAME_MAX_PAYLOAD) {
                d->skip_left = d->len;
                sink->on_oversized(sink->ctx, d->session, d->type, d->len);
                continue;
            }
            d->payload_have = 0;
            if (d->len == 0) {
                struct frame f = { d->session, d->type, 0, (const uint8_t *)"" };
                sink->on_frame(sink->ctx, &f);
                continue;
            }
            /* Zero-copy when the whole payload is already in this chunk. */
            if (n >= d->len) {
                struct frame f = { d->session, d->type, d->len, p };
                p += d->len;
                n -= d->len;
                sink->on_frame(sink->ctx, &f);
                continue;
            }
            if (d->payload_cap < d->len) {
                uint8_t *np = realloc(d->payload, d->len);
                if (!np)
                    return -1;
                d->payload = np;
                d->payload_cap = d->len;
            }
            d->in_payload = true;
        }
        d->payload_have += take(d->payload + d->payload_have, d->len - d->payload_have, &p, &n);
        if (d->payload_have == d->len) {
            d->in_payload = false;
            struct frame f = { d->session, d->type, d->len, d->payload };
            sink->on_frame(sink->ctx, &f);
        }
    }
    return 0;
}

void frame_header_put(uint8_t *h, uint32_t len, uint32_t session, uint8_t type)
{
    put_be32(h, len);
    put_be32(h + 4, session);
    h[8] = type;
}

int frame_put(struct buf *q, uint32_t session, uint8_t type, const void *payload, size_t n)
{
    uint8_t *d = buf_reserve(q, FRAME_HEADER + n);
    if (!d)
        return -1;
    frame_header_put(d, (uint32_t)n, session, type);
    if (n)
        memcpy(d + FRAME_HEADER, payload, n);
    q->len += FRAME_HEADER + n;
    return 0;
}

int frame_put_data(struct buf *q, uint32_t session, uint8_t stream, const void *p, size_t n)
{
    uint8_t *d = buf_reserve(q, FRAME_HEADER + 1 + n);
    if (!d)
        return -1;
    frame_header_put(d, (uint32_t)(n + 1), session, F_DATA);
    d[FRAME_HEADER] = stream;
    if (n)
        memcpy(d + FRAME_HEADER + 1, p, n);
    q->len += FRAME_HEADER + 1 + n;
    return 0;
}

int frame_put_eof(struct buf *q, uint32_t session, uint8_t stream)
{
    return frame_put_data(q, session, stream, NULL, 0);
}

int frame_put_window(struct buf *q, uint32_t session, uint8_t stream, uint32_t inc)
{
    uint8_t p[5];
    p[0] = stream;
    put_be32(p + 1, inc);
    return frame_put(q, session, F_WINDOW, p, sizeof p);
}

int frame_put_error(struct buf *q, uint32_t session, const char *code, const char *message)
{
    struct buf b = { 0 };
    sb_puts(&b, "{\"code\":");
    jw_str(&b, code);
    sb_puts(&b, ",\"message\":");
    jw_str(&b, message ? message : code);
    sb_puts(&b, "}");
    int r = frame_put(q, session, F_ERROR, b.data + b.off, buf_used(&b));
    buf_free(&b);
    return r;
}
