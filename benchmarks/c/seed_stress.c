/*
 * A C copy of the seed's tcp-stress-tool (seed 002): N threads, each opens one
 * TCP connection, sends one 3180-byte MnistProt request, reads the 96-byte
 * answer and closes. All threads start together; the total wall time of the
 * burst is what the seed reported. The request bytes come from a file, so the
 * tool needs no flatbuffers library.
 *
 * usage: seed_stress HOST PORT CLIENTS REQUEST_FILE [TIMEOUT_S]
 * prints: clients=N ok=N errors=N seconds=S
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define REQUEST_SIZE 3180
#define RESPONSE_SIZE 96

static struct sockaddr_in addr;
static unsigned char request[REQUEST_SIZE];
static int timeout_s = 120;
static pthread_barrier_t start;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *client(void *arg) {
    int *ok = arg;
    pthread_barrier_wait(&start);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return NULL;
    struct timeval tv = {timeout_s, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0) {
        size_t sent = 0;
        while (sent < REQUEST_SIZE) {
            ssize_t n = send(fd, request + sent, REQUEST_SIZE - sent, 0);
            if (n <= 0) break;
            sent += (size_t)n;
        }
        unsigned char answer[RESPONSE_SIZE];
        size_t got = 0;
        while (sent == REQUEST_SIZE && got < RESPONSE_SIZE) {
            ssize_t n = recv(fd, answer + got, RESPONSE_SIZE - got, 0);
            if (n <= 0) break;
            got += (size_t)n;
        }
        *ok = got == RESPONSE_SIZE;
    }
    close(fd);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s HOST PORT CLIENTS REQUEST_FILE [TIMEOUT_S]\n", argv[0]);
        return 2;
    }
    int clients = atoi(argv[3]);
    if (clients < 1 || clients > 4096) return 2;
    if (argc > 5) timeout_s = atoi(argv[5]);
    FILE *f = fopen(argv[4], "rb");
    if (!f || fread(request, 1, REQUEST_SIZE, f) != REQUEST_SIZE) return 2;
    fclose(f);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) return 2;
    pthread_t *threads = calloc((size_t)clients, sizeof *threads);
    int *ok = calloc((size_t)clients, sizeof *ok);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    pthread_barrier_init(&start, NULL, (unsigned)clients + 1);
    for (int i = 0; i < clients; i++) pthread_create(&threads[i], &attr, client, &ok[i]);
    double t0 = now();
    pthread_barrier_wait(&start);
    int good = 0;
    for (int i = 0; i < clients; i++) {
        pthread_join(threads[i], NULL);
        good += ok[i];
    }
    printf("clients=%d ok=%d errors=%d seconds=%.6f\n", clients, good, clients - good, now() - t0);
    return 0;
}
