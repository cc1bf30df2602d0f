/*
 * A test harness for clients/c/edgewire.h, driven by tests/clients/test_c_client.py.
 *
 *   ew_harness crc                       < bytes    -> "whole chained" CRC-32s in hex
 *   ew_harness build MODEL N BATCH ID CAP           -> the request frame in hex, or "none"
 *   ew_harness hello TOKEN ID CAP                   -> the HELLO frame in hex, or "none"
 *   ew_harness parse EXPECT_ID OUT_CAP   < frame    -> rc, n, compute_ms, outputs / error
 *   ew_harness many OUT_CAP              < records  -> one "rc n outputs..." line each
 *
 * Every buffer is malloc'ed at its exact size, so that AddressSanitizer sees
 * any access one byte past it. Records for `many` are u32 expect_id, u32 len,
 * then len frame bytes (little-endian).
 */
#include "edgewire.h"

#include <stdio.h>
#include <stdlib.h>

static uint8_t *read_all(size_t *len) {
    size_t cap = 4096, n = 0, got;
    uint8_t *buf = (uint8_t *)malloc(cap);
    while (buf != NULL && (got = fread(buf + n, 1, cap - n, stdin)) > 0) {
        n += got;
        if (n == cap) buf = (uint8_t *)realloc(buf, cap *= 2);
    }
    *len = n;
    return buf;
}

/* An exact-size copy, so that reading past `len` is caught. */
static uint8_t *exact_copy(const uint8_t *data, size_t len) {
    uint8_t *copy = (uint8_t *)malloc(len ? len : 1);
    if (copy != NULL && len) memcpy(copy, data, len);
    return copy;
}

static int parse_one(const uint8_t *data, size_t len, uint32_t expect_id, uint32_t out_cap,
                     int verbose) {
    uint8_t *frame = exact_copy(data, len);
    float *out = out_cap ? (float *)malloc(out_cap * sizeof(float)) : NULL;
    float compute_ms = 0.0f;
    uint32_t n = 0, k;
    int rc = ew_parse_infer_response(frame, len, expect_id, out, out_cap, &n, &compute_ms);
    if (!verbose) {
        /* One line: rc, n, then the outputs. */
        printf("%d %u", rc, rc == EW_OK ? n : 0u);
        for (k = 0; rc == EW_OK && k < n; k++) printf(" %.9g", (double)out[k]);
        printf("\n");
    } else if (rc == EW_OK) {
        printf("rc %d\nn %u\ncompute_ms %.9g\nout", rc, n, (double)compute_ms);
        for (k = 0; k < n; k++) printf(" %.9g", (double)out[k]);
        printf("\n");
    } else {
        printf("rc %d\n", rc);
    }
    if (verbose && rc == EW_ERR_REMOTE) {
        char code[24], message[EW_ERROR_TEXT];
        printf("error_rc %d\n", ew_parse_error(frame, len, code, sizeof(code), message,
                                               sizeof(message)));
        printf("code %s\nmessage %s\n", code, message);
    }
    free(out);
    free(frame);
    return rc;
}

int main(int argc, char **argv) {
    size_t len = 0, i;
    uint8_t *data;
    if (argc == 2 && strcmp(argv[1], "crc") == 0) {
        data = read_all(&len);
        printf("%08x %08x\n", (unsigned)ew_crc32(data, len, 0),
               (unsigned)ew_crc32(data + len / 2, len - len / 2, ew_crc32(data, len / 2, 0)));
        free(data);
        return 0;
    }
    if (argc == 7 && strcmp(argv[1], "build") == 0) {
        uint32_t n = (uint32_t)strtoul(argv[3], NULL, 10), batch = (uint32_t)strtoul(argv[4], NULL, 10);
        size_t cap = (size_t)strtoul(argv[6], NULL, 10), got;
        float *input = (float *)malloc(((size_t)n * batch + 1) * sizeof(float));
        uint8_t *out = (uint8_t *)malloc(cap ? cap : 1);
        for (i = 0; i < (size_t)n * batch; i++) input[i] = (float)i * 0.25f - 3.0f;
        got = ew_build_infer_request(out, cap, (uint32_t)strtoul(argv[5], NULL, 10), argv[2],
                                     input, n, batch);
        if (got == 0) printf("none");
        for (i = 0; i < got; i++) printf("%02x", out[i]);
        printf("\n");
        free(out);
        free(input);
        return 0;
    }
    if (argc == 5 && strcmp(argv[1], "hello") == 0) {
        size_t cap = (size_t)strtoul(argv[4], NULL, 10), got;
        uint8_t *out = (uint8_t *)malloc(cap ? cap : 1);
        got = ew_build_hello(out, cap, (uint32_t)strtoul(argv[3], NULL, 10), argv[2]);
        if (got == 0) printf("none");
        for (i = 0; i < got; i++) printf("%02x", out[i]);
        printf("\n");
        free(out);
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "parse") == 0) {
        data = read_all(&len);
        parse_one(data, len, (uint32_t)strtoul(argv[2], NULL, 10),
                  (uint32_t)strtoul(argv[3], NULL, 10), 1);
        free(data);
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "many") == 0) {
        uint32_t out_cap = (uint32_t)strtoul(argv[2], NULL, 10);
        data = read_all(&len);
        for (i = 0; i + 8 <= len;) {
            uint32_t id = ew_get_u32(data + i), n = ew_get_u32(data + i + 4);
            if (n > len - i - 8) return 2;
            parse_one(data + i + 8, n, id, out_cap, 0);
            i += 8 + n;
        }
        free(data);
        return 0;
    }
    fprintf(stderr, "usage: see the comment at the top of ew_harness.c\n");
    return 2;
}
