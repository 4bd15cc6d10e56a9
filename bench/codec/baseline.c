/*
 * The C baseline of the codec chain benchmark (see run.sh, BENCHMARKS.md).
 *
 *   baseline chain  [EVENTS] [OUTPUT]   decode -> retval != 0 -> NDJSON -> write(2)
 *   baseline decode [EVENTS]            decode only
 *
 * Plain C, written by hand the way a careful C programmer would: the same
 * pool of synthetic connect records as codec-bench (same bytes, same order),
 * a bounds-checked decoder of the bpf/wire.h layout into a struct, and a
 * hand-written formatter for docs/event-record.md lines (key order, RFC 3339 time,
 * errno names, sockaddr objects, JSON escaping of comm and paths): both in
 * ndjson.h, which bench/connect/reference.c shares. In chain mode its output
 * is byte-identical to the Swift program's, which run.sh checks.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ndjson.h"

#define POOL_SIZE 4096
#define BATCH 1024
#define OUT_FLUSH (1 << 20)
#define OUT_CAP (OUT_FLUSH + BATCH * 1024)
static const int64_t WALL_OFFSET_NS = 1795538045000000000LL;

/* ---- the pool, identical to codec-bench's -------------------------------- */

static uint8_t *pool;
static size_t offsets[POOL_SIZE + 1];

static uint8_t *put_le(uint8_t *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
    return p + n;
}

static void build_pool(void) {
    static const int64_t retvals[4] = {0, -111, -101, -13};
    static const char *comms[4] = {"curl", "python3", "nginx", "ssh"};
    pool = calloc(POOL_SIZE, 68 + 5 + 1 + 110);
    uint8_t *p = pool;
    for (int i = 0; i < POOL_SIZE; i++) {
        offsets[i] = (size_t)(p - pool);
        int container = i % 8 == 0;
        p = put_le(p, 1000000000ULL + (uint64_t)i * 1000, 8);
        p = put_le(p, container ? 4026532000u : 0, 4);
        p = put_le(p, container ? 4026532001u : 0, 4);
        p = put_le(p, 1 + i % 7, 4);
        p = put_le(p, 1000 + i % 97, 4);
        p = put_le(p, container ? 1 : 0, 4);
        p = put_le(p, container ? 10 + i % 5 : 0, 4);
        p = put_le(p, i % 3 == 0 ? 0 : 1000, 4);
        p = put_le(p, 42, 4);
        p = put_le(p, 2, 4);
        p = put_le(p, (uint64_t)retvals[i % 4], 8);
        memset(p, 0, 16);
        memcpy(p, comms[(i / 4) % 4], strlen(comms[(i / 4) % 4]));
        p += 16;
        *p++ = INT_T;
        p = put_le(p, (uint32_t)(3 + i % 5), 4);
        *p++ = SOCKADDR_T;
        switch ((i / 16) % 4) {
        case 0:
            p = put_le(p, 2, 2);
            p = put_le(p, htons((uint16_t)(80 + i % 3)), 2);
            *p++ = 127; *p++ = 0; *p++ = 0; *p++ = 1;
            memset(p, 0, 8); p += 8;
            break;
        case 1:
            p = put_le(p, 2, 2);
            p = put_le(p, htons(443), 2);
            *p++ = 10; *p++ = 1; *p++ = 2; *p++ = 3;
            memset(p, 0, 8); p += 8;
            break;
        case 2:
            p = put_le(p, 10, 2);
            p = put_le(p, htons(8443), 2);
            p = put_le(p, 0, 4);
            memset(p, 0, 16); p[0] = 0x20; p[1] = 0x01; p[2] = 0x0d; p[3] = 0xb8; p[15] = 1; p += 16;
            p = put_le(p, 0, 4);
            break;
        default:
            p = put_le(p, 1, 2);
            memset(p, 0, 108);
            memcpy(p, "/run/app.sock", 13);
            p += 108;
        }
    }
    offsets[POOL_SIZE] = (size_t)(p - pool);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void write_all(int fd, const char *b, size_t n) {
    while (n) {
        ssize_t w = write(fd, b, n);
        if (w < 0) { if (errno == EINTR) continue; perror("write"); exit(1); }
        b += w; n -= (size_t)w;
    }
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "chain";
    long events = argc > 2 ? atol(argv[2]) : 10000000;
    const char *path = argc > 3 ? argv[3] : "/dev/null";
    init_layouts();
    build_pool();
    init_node();
    long malformed = 0;
    double start = now();
    int slot = 0;
    if (strcmp(mode, "decode") == 0) {
        int64_t checksum = 0;
        struct event e;
        for (long n = 0; n < events; n++) {
            if (decode(pool + offsets[slot], offsets[slot + 1] - offsets[slot], &e) == 0) {
                checksum += e.retval + e.host_pid;
                if (e.args[1].family == 2) checksum += e.args[1].port;
            } else {
                malformed++;
            }
            if (++slot == POOL_SIZE) slot = 0;
        }
        double s = now() - start;
        printf("mode=decode events=%ld malformed=%ld seconds=%f events_per_s=%.0f checksum=%lld\n",
               events, malformed, s, events / s, (long long)checksum);
        return 0;
    }
    if (strcmp(mode, "chain") != 0) {
        fprintf(stderr, "usage: baseline chain|decode [EVENTS] [OUTPUT]\n");
        return 2;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) { perror(path); return 1; }
    static struct event batch[BATCH];
    char *out = malloc(OUT_CAP);
    char *o = out;
    long produced = 0, passed = 0, bytes = 0;
    while (produced < events) {
        long count = events - produced < BATCH ? events - produced : BATCH;
        int kept = 0;
        for (long k = 0; k < count; k++) {
            if (decode(pool + offsets[slot], offsets[slot + 1] - offsets[slot], &batch[kept]) == 0) {
                if (batch[kept].retval != 0) kept++; /* the retval filter: failures only */
            } else {
                malformed++;
            }
            if (++slot == POOL_SIZE) slot = 0;
        }
        produced += count;
        passed += kept;
        for (int k = 0; k < kept; k++) o = format(o, &batch[k], WALL_OFFSET_NS);
        if (o - out >= OUT_FLUSH) {
            write_all(fd, out, (size_t)(o - out));
            bytes += o - out;
            o = out;
        }
    }
    write_all(fd, out, (size_t)(o - out));
    bytes += o - out;
    close(fd);
    double s = now() - start;
    printf("mode=chain events=%ld passed=%ld malformed=%ld bytes=%ld seconds=%f events_per_s=%.0f\n",
           events, passed, malformed, bytes, s, events / s);
    return 0;
}
