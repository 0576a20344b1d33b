/* Channel framing (docs/protocol.md, "Frames"): the 9-byte header, an
 * incremental decoder that never loses sync, and writers that append frames
 * to an output queue. */
#ifndef MA_FRAME_H
#define MA_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define FRAME_HEADER 9
#define FRAME_MAX_PAYLOAD (1u << 20)
#define DATA_CHUNK (32u << 10)
#define INITIAL_WINDOW (256u << 10)

enum frame_type {
    F_HELLO = 1,
    F_OPEN = 2,
    F_DATA = 3,
    F_WINDOW = 4,
    F_CONTROL = 5,
    F_EXIT = 6,
    F_ERROR = 7,
    F_CLOSE = 8,
};

enum { STREAM_STDIN = 0, STREAM_STDOUT = 1, STREAM_STDERR = 2 };

struct frame {
    uint32_t session;
    uint8_t type;
    uint32_t len;
    const uint8_t *payload;
};

/* Events the decoder reports. */
struct frame_sink {
    void *ctx;
    /* A complete frame (payload valid only during the call). */
    void (*on_frame)(void *ctx, const struct frame *f);
    /* A header announced more than FRAME_MAX_PAYLOAD; its payload will be
     * skipped. */
    void (*on_oversized)(void *ctx, uint32_t session, uint8_t type, uint32_t len);
};

struct frame_decoder {
    uint8_t hdr[FRAME_HEADER];
    size_t hdr_have;
    uint32_t len, session;
    uint8_t type;
    bool in_payload;
    uint64_t skip_left;
    uint8_t *payload;
    size_t payload_cap, payload_have;
};

void frame_decoder_reset(struct frame_decoder *d);
void frame_decoder_free(struct frame_decoder *d);
/* Feed bytes; calls the sink for every event. Returns -1 only on OOM. */
int frame_decoder_feed(struct frame_decoder *d, const uint8_t *p, size_t n,
                       const struct frame_sink *sink);

void frame_header_put(uint8_t *h, uint32_t len, uint32_t session, uint8_t type);

/* Append frames to an output queue. */
int frame_put(struct buf *q, uint32_t session, uint8_t type, const void *payload, size_t n);
int frame_put_data(struct buf *q, uint32_t session, uint8_t stream, const void *p, size_t n);
int frame_put_eof(struct buf *q, uint32_t session, uint8_t stream);
int frame_put_window(struct buf *q, uint32_t session, uint8_t stream, uint32_t inc);
/* ERROR {"code":..., "message":...} */
int frame_put_error(struct buf *q, uint32_t session, const char *code, const char *message);

static inline uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

#endif
