/*
 * Helpers for the nats benchmark (bench/nats/run.sh):
 *
 *   fleetbench lines N FILE
 *       writes N connect records (SPEC section 3 shape, no node) to FILE
 *   fleetbench gen FIFO RATE SECONDS
 *       writes RATE connect records a second into FIFO for SECONDS, each
 *       carrying its wall-clock write time (ns) in ktime_ns, in slices of 1 ms
 *   fleetbench recv SOCKET COUNT
 *       reads records from a unix_socket sink until COUNT arrived (or 30 s of
 *       silence) and prints the latency (arrival - ktime_ns) percentiles:
 *       received=N p50_ms=… p99_ms=… max_ms=…
 *   fleetbench connects RATE SECONDS
 *       makes RATE UDP connect() calls a second to 127.0.0.1 for SECONDS,
 *       in slices of 1 ms: generated=N seconds=… rate=…
 *
 * Build: cc -O2 -o fleetbench fleetbench.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static long long wall_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static long long mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void sleep_until(long long deadline)
{
    long long left = deadline - mono_ns();
    if (left <= 0)
        return;
    struct timespec t = { left / 1000000000LL, left % 1000000000LL };
    nanosleep(&t, NULL);
}

static int line(char *out, size_t size, long long n, long long ktime)
{
    int failed = n % 3 == 0;
    return snprintf(out, size,
        "{\"time\":\"2026-11-24T16:34:13.%09lldZ\",\"ktime_ns\":%lld,\"event\":\"connect\",\"event_id\":42,"
        "\"scope\":\"network\",\"retval\":%d,\"result\":\"%s\",\"pid\":4242,\"ppid\":1,"
        "\"host_pid\":4242,\"host_ppid\":1,\"uid\":0,\"pid_ns\":0,\"mnt_ns\":0,\"origin\":\"host\",\"comm\":\"python3\","
        "\"args\":{\"fd\":%lld,\"addr\":{\"family\":\"AF_INET\",\"ip\":\"127.0.0.1\",\"port\":%lld}}}\n",
        n % 1000000000LL, ktime, failed ? -111 : 0, failed ? "ECONNREFUSED" : "ok", 3 + n % 5, 1 + n % 60000);
}

static int write_all(int fd, const char *data, size_t size)
{
    while (size > 0) {
        ssize_t n = write(fd, data, size);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        data += n;
        size -= n;
    }
    return 0;
}

static int lines(long long count, const char *path)
{
    FILE *file = fopen(path, "w");
    if (file == NULL) {
        perror(path);
        return 1;
    }
    char buffer[512];
    for (long long n = 0; n < count; n++) {
        line(buffer, sizeof(buffer), n, 8000000000LL + n);
        fputs(buffer, file);
    }
    return fclose(file) ? 1 : 0;
}

static int gen(const char *path, long rate, double seconds)
{
    int fd = open(path, O_WRONLY);
    if (fd < 0) {
        perror(path);
        return 1;
    }
    long long total = (long long) (rate * seconds), sent = 0;
    long long start = mono_ns();
    static char buffer[1 << 20];
    while (sent < total) {
        long long slice = (mono_ns() - start) / 1000000LL + 1; /* ms elapsed */
        long long due = slice * rate / 1000;
        if (due > total)
            due = total;
        size_t used = 0;
        long long now = wall_ns();
        while (sent < due && used + 512 < sizeof(buffer))
            used += line(buffer + used, 512, sent, now), sent++;
        if (used && write_all(fd, buffer, used))
            return 1;
        sleep_until(start + slice * 1000000LL);
    }
    close(fd);
    printf("generated=%lld seconds=%.3f\n", sent, (mono_ns() - start) / 1e9);
    return 0;
}

static int compare(const void *a, const void *b)
{
    long long x = *(const long long *) a, y = *(const long long *) b;
    return x < y ? -1 : x > y;
}

static int recv_latency(const char *path, long long count)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un address = { .sun_family = AF_UNIX };
    snprintf(address.sun_path, sizeof(address.sun_path), "%s", path);
    for (int attempt = 0; connect(fd, (struct sockaddr *) &address, sizeof(address)); attempt++) {
        if (attempt > 600) {
            perror(path);
            return 1;
        }
        usleep(100000);
    }
    struct timeval timeout = { 30, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    long long *latencies = malloc(sizeof(long long) * count);
    long long received = 0;
    static char buffer[1 << 20];
    size_t held = 0;
    printf("ready\n");
    fflush(stdout);
    while (received < count) {
        ssize_t n = read(fd, buffer + held, sizeof(buffer) - held);
        if (n <= 0)
            break;
        long long now = wall_ns();
        held += n;
        char *start = buffer, *end;
        while ((end = memchr(start, '\n', buffer + held - start)) != NULL) {
            char *k = memmem(start, end - start, "\"ktime_ns\":", 11);
            if (k != NULL && received < count)
                latencies[received++] = now - atoll(k + 11);
            start = end + 1;
        }
        held = buffer + held - start;
        memmove(buffer, start, held);
    }
    if (received == 0) {
        printf("received=0\n");
        return 1;
    }
    qsort(latencies, received, sizeof(long long), compare);
    printf("received=%lld p50_ms=%.2f p99_ms=%.2f max_ms=%.2f\n", received,
           latencies[received / 2] / 1e6, latencies[received * 99 / 100] / 1e6, latencies[received - 1] / 1e6);
    return 0;
}

static int connects(long rate, double seconds)
{
    int udp = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in peer = { .sin_family = AF_INET, .sin_port = htons(9), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    long long total = (long long) (rate * seconds), made = 0;
    long long start = mono_ns();
    while (made < total) {
        long long slice = (mono_ns() - start) / 1000000LL + 1;
        long long due = slice * rate / 1000;
        if (due > total)
            due = total;
        while (made < due) {
            if (syscall(SYS_connect, udp, &peer, sizeof(peer)))
                return 2;
            made++;
        }
        sleep_until(start + slice * 1000000LL);
    }
    double elapsed = (mono_ns() - start) / 1e9;
    printf("generated=%lld seconds=%.3f rate=%.0f\n", made, elapsed, made / elapsed);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 4 && !strcmp(argv[1], "lines"))
        return lines(atoll(argv[2]), argv[3]);
    if (argc == 5 && !strcmp(argv[1], "gen"))
        return gen(argv[2], atol(argv[3]), atof(argv[4]));
    if (argc == 4 && !strcmp(argv[1], "recv"))
        return recv_latency(argv[2], atoll(argv[3]));
    if (argc == 4 && !strcmp(argv[1], "connects"))
        return connects(atol(argv[2]), atof(argv[3]));
    fprintf(stderr, "usage: fleetbench lines N FILE | gen FIFO RATE SECONDS | recv SOCKET COUNT | connects RATE SECONDS\n");
    return 64;
}
