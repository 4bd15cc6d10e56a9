/*
 * The soak's mixed syscall load: RATE rounds a second (default 2000) until
 * killed, each round an openat+close of a file that exists, one of a file
 * that does not (ENOENT: dropped in the kernel by the default skip_retvals),
 * a socket+connect to a UDP port on 127.0.0.1 (succeeds) and a TCP connect
 * to a closed port (ECONNREFUSED) and an unlink of a missing file; every
 * 50th round a fork+execve of /bin/true, waited for. Prints one line a
 * second to stderr: `rounds=N`.
 *
 *     load [RATE] [DIR]      DIR: where it opens its file (default /tmp)
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
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    long rate = argc > 1 ? atol(argv[1]) : 2000;
    const char *dir = argc > 2 ? argv[2] : "/tmp";
    char present[4096], missing[4096];
    snprintf(present, sizeof(present), "%s/soak-load-%d", dir, getpid());
    snprintf(missing, sizeof(missing), "%s/soak-load-missing-%d", dir, getpid());
    int keep = open(present, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (keep < 0) {
        perror(present);
        return 70;
    }
    close(keep);
    /* The refused port: bound, never listening. */
    int holder = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in closed = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof(closed);
    if (bind(holder, (struct sockaddr *)&closed, sizeof(closed)) || getsockname(holder, (struct sockaddr *)&closed, &len))
        return 71;
    struct sockaddr_in udp_peer = { .sin_family = AF_INET, .sin_port = htons(9), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };

    double start = now(), report = start + 1;
    for (long round = 0;; round++) {
        if (rate > 0) {
            /* Round i is due at start + i / rate. */
            double due = start + (double)round / rate, wait = due - now();
            if (wait > 0) {
                struct timespec pause = { (time_t)wait, (long)((wait - (time_t)wait) * 1e9) };
                nanosleep(&pause, NULL);
            }
        }
        int fd = open(present, O_RDONLY | O_CLOEXEC);
        if (fd >= 0)
            close(fd);
        fd = open(missing, O_RDONLY | O_CLOEXEC);
        if (fd >= 0)
            close(fd);
        int udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        connect(udp, (struct sockaddr *)&udp_peer, sizeof(udp_peer));
        close(udp);
        int tcp = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        connect(tcp, (struct sockaddr *)&closed, sizeof(closed));
        close(tcp);
        unlink(missing);
        if (round % 50 == 0) {
            pid_t child = fork();
            if (child == 0) {
                execl("/bin/true", "true", (char *)NULL);
                _exit(127);
            }
            if (child > 0)
                waitpid(child, NULL, 0);
        }
        if (now() >= report) {
            fprintf(stderr, "rounds=%ld\n", round + 1);
            report += 1;
        }
    }
}
