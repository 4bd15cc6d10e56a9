/*
 * A few connect() calls of every shape the C reference's formatter must
 * write as pipelined does, for check-reference.sh: IPv4 and IPv6 (ok and
 * refused), AF_UNIX named, abstract and with characters JSON escapes,
 * AF_UNSPEC, a bad fd and a bad address pointer; then the same under a comm
 * with a quote, a backslash, a control character and bytes that are not
 * UTF-8. Prints nothing; exits 0.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stddef.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

/* The raw syscall, as loadgen makes it (libc may not pass addrlen through). */
static void call(int fd, const void *addr, socklen_t len)
{
    syscall(SYS_connect, fd, addr, len);
}

static void unix_connect(int type, const char *path, size_t path_len)
{
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    memcpy(a.sun_path, path, path_len);
    int fd = socket(AF_UNIX, type, 0);
    call(fd, &a, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + path_len));
    close(fd);
}

static void shapes(void)
{
    /* IPv4: UDP succeeds, TCP to a bound port that does not listen is refused. */
    struct sockaddr_in v4 = { .sin_family = AF_INET, .sin_port = htons(9), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    int udp = socket(AF_INET, SOCK_DGRAM, 0);
    call(udp, &v4, sizeof v4);
    struct sockaddr_in closed = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof closed;
    int holder = socket(AF_INET, SOCK_STREAM, 0);
    bind(holder, (struct sockaddr *)&closed, sizeof closed);
    getsockname(holder, (struct sockaddr *)&closed, &len);
    int tcp = socket(AF_INET, SOCK_STREAM, 0);
    call(tcp, &closed, sizeof closed);
    close(tcp);
    /* A peer with every octet different (EINVAL: the socket's source is
     * now the loopback address, which cannot reach it). */
    struct sockaddr_in other = { .sin_family = AF_INET, .sin_port = htons(65535) };
    inet_pton(AF_INET, "10.200.3.45", &other.sin_addr);
    call(udp, &other, sizeof other);

    /* IPv6: ::1 and an address whose text has a :: in the middle. */
    struct sockaddr_in6 v6 = { .sin6_family = AF_INET6, .sin6_port = htons(53), .sin6_addr = IN6ADDR_LOOPBACK_INIT };
    int udp6 = socket(AF_INET6, SOCK_DGRAM, 0);
    call(udp6, &v6, sizeof v6);
    inet_pton(AF_INET6, "2001:db8::ff00:42:8329", &v6.sin6_addr);
    call(udp6, &v6, sizeof v6);
    inet_pton(AF_INET6, "::ffff:127.0.0.1", &v6.sin6_addr);
    call(udp6, &v6, sizeof v6);
    close(udp6);

    /* AF_UNIX: a datagram socket bound here (ok), an abstract name nobody
     * listens on (refused), a path with characters JSON escapes. */
    const char bound[] = "bench-families.sock";
    unlink(bound);
    int server = socket(AF_UNIX, SOCK_DGRAM, 0);
    struct sockaddr_un at = { .sun_family = AF_UNIX };
    memcpy(at.sun_path, bound, sizeof bound);
    bind(server, (struct sockaddr *)&at, sizeof at);
    unix_connect(SOCK_DGRAM, bound, sizeof bound);
    unix_connect(SOCK_STREAM, "\0pipelined-nobody", 17);
    const char odd[] = "q\"b\\n\nt\t\x01\xc3\xa9\xff.sock";
    unlink(odd);
    int odd_server = socket(AF_UNIX, SOCK_DGRAM, 0);
    memcpy(at.sun_path, odd, sizeof odd);
    bind(odd_server, (struct sockaddr *)&at, sizeof at);
    unix_connect(SOCK_DGRAM, odd, sizeof odd);
    close(odd_server);
    unlink(odd);
    close(server);
    unlink(bound);

    /* AF_UNSPEC dissolves the UDP association (ok); a bad fd; a bad pointer. */
    struct sockaddr unspec = { .sa_family = AF_UNSPEC };
    call(udp, &unspec, sizeof unspec);
    call(-1, &v4, sizeof v4);
    call(udp, (const void *)8, sizeof v4);
    close(udp);
    close(holder);
}

int main(void)
{
    shapes();
    /* comm: a quote, a backslash, a control character, é, a lone 0xff. */
    prctl(PR_SET_NAME, "f\"\\\x07\xc3\xa9\xff", 0, 0, 0);
    shapes();
    return 0;
}
