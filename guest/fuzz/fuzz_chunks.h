/* Split a fuzz input into deterministic pseudo-random chunks, the way reads
 * from the channel split a byte stream: the split depends only on the input,
 * so every crash reproduces from its file alone. */
#ifndef MA_FUZZ_CHUNKS_H
#define MA_FUZZ_CHUNKS_H

#include <stddef.h>
#include <stdint.h>

struct chunker {
    uint64_t state;
};

static inline void chunker_init(struct chunker *c, const uint8_t *data, size_t size)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < size; i++)
        h = (h ^ data[i]) * 1099511628211ull;
    c->state = h | 1;
}

/* Next chunk length in 1..left: mostly small (headers split mid-way), now
 * and then everything that is left (the zero-copy path). */
static inline size_t chunker_next(struct chunker *c, size_t left)
{
    c->state ^= c->state << 13;
    c->state ^= c->state >> 7;
    c->state ^= c->state << 17;
    size_t n = (c->state >> 8) % 4 == 0 ? left : 1 + (size_t)((c->state >> 16) % 16);
    return n < left ? n : left;
}

#endif
