/* abort() with a message when a harness invariant breaks: libFuzzer then
 * saves the input as a crash like any sanitizer report. */
#ifndef MA_FUZZ_CHECK_H
#define MA_FUZZ_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond)                                                                 \
    do {                                                                            \
        if (!(cond)) {                                                              \
            fprintf(stderr, "check failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
            abort();                                                                \
        }                                                                           \
    } while (0)

#endif
