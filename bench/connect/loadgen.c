/*
 * connect() load for the kernel source benchmark: P processes (default 2,
 * one per core here) each make N connect calls as fast as they can. MODE
 * `mixed` (default) alternates a UDP connect to 127.0.0.1 (succeeds: it only
 * sets the peer) and a TCP connect to a bound but not listening 127.0.0.1
 * port (refused, -111); `udp` makes only the UDP connects (the fastest
 * storm, where a tracer's per-event cost shows most); `tcp` only the refused
 * ones. Each call is one traced event; none is skipped by the default
 * skip_retvals. `seq` makes UDP connects whose peer port counts up
 * (1, 2, ... 65535, 1, ...), so that a reader can check every call arrived
 * exactly once and in order. RATE (calls per second per process, default 0:
 * as fast as possible) paces the calls. Prints what it generated and how fast:
 *
 *     loadgen [N per process] [P] [mixed|udp|tcp|seq] [RATE]
 *     generated=2000000 seconds=1.234 rate=1620745 refused=1000000 ok=1000000 other=0 first_done=1.201
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

struct counts {
    long ok, refused, other;
    double seconds; /* this process's own time from start to its last call */
};

enum mode { MIXED, UDP_ONLY, TCP_ONLY, SEQ };

static struct counts work(long n, int pipe_fd, enum mode mode, double start, long rate)
{
    struct counts c = { 0, 0, 0, 0 };
    /* The refused port: bound, never listening, held for the whole run. */
    int holder = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in closed = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof(closed);
    if (bind(holder, (struct sockaddr *)&closed, sizeof(closed)) || getsockname(holder, (struct sockaddr *)&closed, &len))
        exit(70);
    struct sockaddr_in udp_peer = { .sin_family = AF_INET, .sin_port = htons(9), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    int udp = socket(AF_INET, SOCK_DGRAM, 0);
    int tcp = socket(AF_INET, SOCK_STREAM, 0);
    for (long i = 0; i < n; i++) {
        long r;
        int use_tcp = mode == TCP_ONLY || (mode == MIXED && (i & 1));
        if (rate > 0 && i % 100 == 0) {
            /* Paced: call i is due at start + i / rate. */
            double due = start + (double)i / rate, wait = due - now();
            if (wait > 0) {
                struct timespec pause = { (time_t)wait, (long)((wait - (time_t)wait) * 1e9) };
                nanosleep(&pause, NULL);
            }
        }
        if (mode == SEQ) {
            udp_peer.sin_port = htons((unsigned short)(1 + i % 65535));
            r = syscall(SYS_connect, udp, &udp_peer, sizeof(udp_peer));
        } else if (use_tcp) {
            r = syscall(SYS_connect, tcp, &closed, sizeof(closed));
        } else {
            r = syscall(SYS_connect, udp, &udp_peer, sizeof(udp_peer));
        }
        if (r == 0)
            c.ok++;
        else if (errno == ECONNREFUSED)
            c.refused++;
        else
            c.other++;
    }
    c.seconds = now() - start;
    if (write(pipe_fd, &c, sizeof(c)) != sizeof(c))
        exit(71);
    return c;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    int processes = argc > 2 ? atoi(argv[2]) : 2;
    const char *mode_name = argc > 3 ? argv[3] : "mixed";
    long rate = argc > 4 ? atol(argv[4]) : 0;
    enum mode mode;
    if (!strcmp(mode_name, "mixed"))
        mode = MIXED;
    else if (!strcmp(mode_name, "udp"))
        mode = UDP_ONLY;
    else if (!strcmp(mode_name, "tcp"))
        mode = TCP_ONLY;
    else if (!strcmp(mode_name, "seq"))
        mode = SEQ;
    else {
        fprintf(stderr, "loadgen: mode must be mixed, udp, tcp or seq\n");
        return 64;
    }
    int fds[2];
    if (pipe(fds))
        return 1;
    double start = now();
    for (int p = 0; p < processes; p++) {
        pid_t child = fork();
        if (child == 0) {
            work(n, fds[1], mode, start, rate);
            _exit(0);
        }
        /* A reader finds each worker's calls by its pid. */
        printf("worker=%d\n", (int)child);
        fflush(stdout);
    }
    /* Only the workers write: a worker that dies ends the parent's read. */
    close(fds[1]);
    struct counts total = { 0, 0, 0, 0 };
    double first_done = 0;
    for (int p = 0; p < processes; p++) {
        struct counts c;
        if (read(fds[0], &c, sizeof(c)) != sizeof(c))
            return 2;
        total.ok += c.ok;
        total.refused += c.refused;
        total.other += c.other;
        if (p == 0 || c.seconds < first_done)
            first_done = c.seconds;
    }
    while (wait(NULL) > 0)
        ;
    double seconds = now() - start;
    long generated = n * processes;
    /* first_done: when the first process finished; from then on fewer than
     * P processes were generating, so the gap to `seconds` shows how evenly
     * the machine shared its cores among them. */
    printf("generated=%ld seconds=%.3f rate=%.0f refused=%ld ok=%ld other=%ld first_done=%.3f\n",
           generated, seconds, generated / seconds, total.refused, total.ok, total.other, first_done);
    return total.other == 0 ? 0 : 3;
}
