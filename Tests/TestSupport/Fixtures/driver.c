/*
 * A process whose syscalls the syscall_monitor tests know exactly. Compiled
 * by the tests with `cc` and run as `driver SCENARIO DIR`. Every traced
 * syscall is made through syscall(2), so that libc cannot swap one syscall
 * for another (open() is openat() in glibc), and every one is reported on
 * stdout as one line:
 *
 *     <event> TAB <retval> TAB <arg> TAB <arg> ...
 *
 * with each arg as the test parses it by the event's declared type: ints and
 * flags in decimal, strings as text, string arrays joined by '|', sockaddrs
 * as "AF_INET 127.0.0.1 80", "AF_INET6 ::1 80", "AF_UNIX /path" or
 * "AF_UNIX @abstract". The test compares the kernel's records against what
 * really happened. Lines starting with '#' are comments.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static long ret(long value)
{
    return value < 0 ? -errno : value;
}

static void report(const char *event, long value, const char *args)
{
    printf("%s\t%ld\t%s\n", event, value, args);
    fflush(stdout);
}

static int tcp_listener(int family, int *port)
{
    int fd = socket(family, SOCK_STREAM, 0);
    if (family == AF_INET) {
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(a);
        if (bind(fd, (struct sockaddr *)&a, sizeof(a)) || listen(fd, 16) || getsockname(fd, (struct sockaddr *)&a, &len))
            exit(70);
        *port = ntohs(a.sin_port);
    } else {
        struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
        socklen_t len = sizeof(a);
        if (bind(fd, (struct sockaddr *)&a, sizeof(a)) || listen(fd, 16) || getsockname(fd, (struct sockaddr *)&a, &len))
            exit(71);
        *port = ntohs(a.sin6_port);
    }
    return fd;
}

static long do_connect(int fd, const void *addr, socklen_t len)
{
    return ret(syscall(SYS_connect, fd, addr, len));
}

/* Connects of every family, successful, refused and skipped. */
static void scenario_connect(const char *dir)
{
    char detail[256];
    int port4, port6;
    int listener4 = tcp_listener(AF_INET, &port4);
    int listener6 = tcp_listener(AF_INET6, &port6);

    /* A port bound but not listening: connecting is refused. */
    int closed = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in c = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t clen = sizeof(c);
    if (bind(closed, (struct sockaddr *)&c, sizeof(c)) || getsockname(closed, (struct sockaddr *)&c, &clen))
        exit(72);

    int fd = socket(AF_INET, SOCK_STREAM, 0);
    snprintf(detail, sizeof(detail), "%d\tAF_INET 127.0.0.1 %d", fd, ntohs(c.sin_port));
    report("connect", do_connect(fd, &c, sizeof(c)), detail);
    close(fd);

    fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port4), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    snprintf(detail, sizeof(detail), "%d\tAF_INET 127.0.0.1 %d", fd, port4);
    report("connect", do_connect(fd, &a, sizeof(a)), detail);
    close(fd);

    fd = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_port = htons(port6), .sin6_addr = IN6ADDR_LOOPBACK_INIT };
    snprintf(detail, sizeof(detail), "%d\tAF_INET6 ::1 %d", fd, port6);
    report("connect", do_connect(fd, &a6, sizeof(a6)), detail);
    close(fd);

    /* AF_UNIX by path. */
    struct sockaddr_un u = { .sun_family = AF_UNIX };
    snprintf(u.sun_path, sizeof(u.sun_path), "%s/unix.sock", dir);
    int unix_listener = socket(AF_UNIX, SOCK_STREAM, 0);
    if (bind(unix_listener, (struct sockaddr *)&u, sizeof(u)) || listen(unix_listener, 4))
        exit(73);
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    snprintf(detail, sizeof(detail), "%d\tAF_UNIX %s", fd, u.sun_path);
    report("connect", do_connect(fd, &u, sizeof(u)), detail);
    close(fd);

    /* AF_UNIX abstract: only the used bytes of the name count (addrlen). */
    struct sockaddr_un abstract = { .sun_family = AF_UNIX };
    char name[64];
    int name_len = snprintf(name, sizeof(name), "pipelined-test-%d", getpid());
    memcpy(abstract.sun_path + 1, name, name_len);
    socklen_t abstract_len = offsetof(struct sockaddr_un, sun_path) + 1 + name_len;
    int abstract_listener = socket(AF_UNIX, SOCK_STREAM, 0);
    if (bind(abstract_listener, (struct sockaddr *)&abstract, abstract_len) || listen(abstract_listener, 4))
        exit(74);
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    snprintf(detail, sizeof(detail), "%d\tAF_UNIX @%s", fd, name);
    report("connect", do_connect(fd, &abstract, abstract_len), detail);
    close(fd);

    /* UDP: connect only sets the peer. */
    fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in udp = { .sin_family = AF_INET, .sin_port = htons(9), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    snprintf(detail, sizeof(detail), "%d\tAF_INET 127.0.0.1 9", fd);
    report("connect", do_connect(fd, &udp, sizeof(udp)), detail);
    close(fd);

    /* Skipped in the kernel by default: ENOENT and EINPROGRESS. */
    struct sockaddr_un missing = { .sun_family = AF_UNIX };
    snprintf(missing.sun_path, sizeof(missing.sun_path), "%s/missing.sock", dir);
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    snprintf(detail, sizeof(detail), "%d\tAF_UNIX %s", fd, missing.sun_path);
    report("connect", do_connect(fd, &missing, sizeof(missing)), detail);
    close(fd);

    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    snprintf(detail, sizeof(detail), "%d\tAF_INET 127.0.0.1 %d", fd, port4);
    report("connect", do_connect(fd, &a, sizeof(a)), detail);
    close(fd);

    close(listener4);
    close(listener6);
    close(closed);
    close(unix_listener);
    close(abstract_listener);
}

/* socket, bind, listen, accept with their decoded args. */
static void scenario_server(const char *dir)
{
    char detail[256];
    (void)dir;
    long server = ret(syscall(SYS_socket, AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    snprintf(detail, sizeof(detail), "%d\t%d\t0", AF_INET, SOCK_STREAM | SOCK_CLOEXEC);
    report("socket", server, detail);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    snprintf(detail, sizeof(detail), "%ld\tAF_INET 127.0.0.1 0", server);
    report("bind", ret(syscall(SYS_bind, server, &a, sizeof(a))), detail);
    socklen_t len = sizeof(a);
    getsockname(server, (struct sockaddr *)&a, &len);
    snprintf(detail, sizeof(detail), "%ld\t42", server);
    report("listen", ret(syscall(SYS_listen, server, 42)), detail);

    long client = ret(syscall(SYS_socket, AF_INET6, SOCK_DGRAM, 0));
    snprintf(detail, sizeof(detail), "%d\t%d\t0", AF_INET6, SOCK_DGRAM);
    report("socket", client, detail);
    close(client);
    client = ret(syscall(SYS_socket, AF_INET, SOCK_STREAM, 0));
    snprintf(detail, sizeof(detail), "%d\t%d\t0", AF_INET, SOCK_STREAM);
    report("socket", client, detail);
    snprintf(detail, sizeof(detail), "%ld\tAF_INET 127.0.0.1 %d", client, ntohs(a.sin_port));
    report("connect", do_connect(client, &a, sizeof(a)), detail);
    struct sockaddr_in local;
    len = sizeof(local);
    getsockname(client, (struct sockaddr *)&local, &len);

    struct sockaddr_in peer;
    socklen_t peer_len = sizeof(peer);
    long accepted = ret(syscall(SYS_accept, server, &peer, &peer_len));
    snprintf(detail, sizeof(detail), "%ld\tAF_INET 127.0.0.1 %d", server, ntohs(local.sin_port));
    report("accept", accepted, detail);
    close(accepted);
    close(client);
    close(server);
}

/* File events, all on paths under DIR. */
static void scenario_files(const char *dir)
{
    char path[512], detail[600];
    int dirfd = open(dir, O_RDONLY | O_DIRECTORY);
    printf("# dirfd %d\n", dirfd);

    snprintf(path, sizeof(path), "%s/a", dir);
    long fd = ret(syscall(SYS_open, path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
    snprintf(detail, sizeof(detail), "%s\t%d", path, O_WRONLY | O_CREAT | O_CLOEXEC);
    report("open", fd, detail);
    snprintf(detail, sizeof(detail), "%ld", fd);
    report("close", ret(syscall(SYS_close, fd)), detail);

    fd = ret(syscall(SYS_openat, dirfd, "b", O_RDWR | O_CREAT | O_TRUNC, 0600));
    snprintf(detail, sizeof(detail), "%d\tb\t%d", dirfd, O_RDWR | O_CREAT | O_TRUNC);
    report("openat", fd, detail);
    snprintf(detail, sizeof(detail), "%ld", fd);
    report("close", ret(syscall(SYS_close, fd)), detail);

    /* EEXIST is reported (only ENOENT and EINPROGRESS are skipped). */
    snprintf(detail, sizeof(detail), "%d\ta\t%d", dirfd, O_WRONLY | O_CREAT | O_EXCL);
    report("openat", ret(syscall(SYS_openat, dirfd, "a", O_WRONLY | O_CREAT | O_EXCL, 0600)), detail);
    /* ENOENT: skipped. */
    snprintf(detail, sizeof(detail), "%d\tmissing\t%d", dirfd, O_RDONLY);
    report("openat", ret(syscall(SYS_openat, dirfd, "missing", O_RDONLY)), detail);

    snprintf(detail, sizeof(detail), "%s\t1234\t5678", path);
    report("chown", ret(syscall(SYS_chown, path, 1234, 5678)), detail);
    snprintf(detail, sizeof(detail), "%d\tb\t4321\t8765\t%d", dirfd, AT_SYMLINK_NOFOLLOW);
    report("fchownat", ret(syscall(SYS_fchownat, dirfd, "b", 4321, 8765, AT_SYMLINK_NOFOLLOW)), detail);

    report("unlink", ret(syscall(SYS_unlink, path)), path);
    snprintf(detail, sizeof(detail), "%d\tb\t0", dirfd);
    report("unlinkat", ret(syscall(SYS_unlinkat, dirfd, "b", 0)), detail);

    snprintf(path, sizeof(path), "%s/sub", dir);
    mkdir(path, 0755);
    snprintf(detail, sizeof(detail), "%d\tsub\t%d", dirfd, AT_REMOVEDIR);
    report("unlinkat", ret(syscall(SYS_unlinkat, dirfd, "sub", AT_REMOVEDIR)), detail);

    snprintf(path, sizeof(path), "%s/sub2", dir);
    mkdir(path, 0755);
    report("rmdir", ret(syscall(SYS_rmdir, path)), path);
    close(dirfd);
}

/* Privilege and mount events; then execve and execveat into this program. */
static void scenario_process(const char *dir, const char *self)
{
    char path[512], detail[600];
    snprintf(detail, sizeof(detail), "%d", (int)getuid());
    report("setuid", ret(syscall(SYS_setuid, getuid())), detail);
    snprintf(detail, sizeof(detail), "%d", (int)getgid());
    report("setgid", ret(syscall(SYS_setgid, getgid())), detail);
    /* A process cannot attach to itself: EPERM. */
    snprintf(detail, sizeof(detail), "%d\t%d", PTRACE_ATTACH, getpid());
    report("ptrace", ret(syscall(SYS_ptrace, PTRACE_ATTACH, getpid(), 0, 0)), detail);

    snprintf(path, sizeof(path), "%s/mnt", dir);
    mkdir(path, 0755);
    snprintf(detail, sizeof(detail), "pipelined-tmpfs\t%s\ttmpfs\t%d\tsize=1m", path, MS_NOSUID | MS_NODEV);
    report("mount", ret(syscall(SYS_mount, "pipelined-tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m")), detail);
    snprintf(detail, sizeof(detail), "%s\t%d", path, MNT_DETACH);
    report("umount", ret(syscall(SYS_umount2, path, MNT_DETACH)), detail);

    /* execve of a file that is not executable: EACCES, reported with argv. */
    snprintf(path, sizeof(path), "%s/not-executable", dir);
    close(open(path, O_WRONLY | O_CREAT, 0644));
    char *denied_argv[] = { "not-executable", "--flag", "value with spaces", NULL };
    char *envp[] = { "PIPELINED_TEST=1", NULL };
    snprintf(detail, sizeof(detail), "%s\tnot-executable|--flag|value with spaces", path);
    report("execve", ret(syscall(SYS_execve, path, denied_argv, envp)), detail);

    /* execveat into ourselves; the new image goes on with "after-execveat". */
    char *dir_copy = strdup(self);
    char *slash = strrchr(dir_copy, '/');
    *slash = 0;
    int selfdir = open(dir_copy, O_RDONLY | O_DIRECTORY);
    char *exec_argv[] = { "driver", "after-execveat", (char *)dir, (char *)self, NULL };
    snprintf(detail, sizeof(detail), "%d\t%s\tdriver|after-execveat|%s|%s\t0", selfdir, slash + 1, dir, self);
    report("execveat-attempt", 0, detail);
    syscall(SYS_execveat, selfdir, slash + 1, exec_argv, envp, 0);
    report("execveat", -errno, "failed");
    exit(75);
}

/* From a thread other than the leader: an execve that fails (EACCES), then
 * one into this program, which goes on with "done". A successful exec gives
 * the thread the leader's id before the syscall returns. */
struct thread_exec {
    const char *dir;
    const char *self;
};

static void *thread_exec_main(void *context)
{
    const struct thread_exec *t = context;
    char path[512], detail[1200];
    char *envp[] = { NULL };
    printf("# thread %ld of %d\n", (long)syscall(SYS_gettid), (int)getpid());
    snprintf(path, sizeof(path), "%s/not-executable", t->dir);
    close(open(path, O_WRONLY | O_CREAT, 0644));
    char *denied_argv[] = { "not-executable", NULL };
    snprintf(detail, sizeof(detail), "%s\tnot-executable", path);
    report("execve", ret(syscall(SYS_execve, path, denied_argv, envp)), detail);
    char *argv[] = { "driver", "done", (char *)t->dir, NULL };
    snprintf(detail, sizeof(detail), "%s\tdriver|done|%s", t->self, t->dir);
    report("execve-attempt", 0, detail);
    syscall(SYS_execve, t->self, argv, envp);
    report("execve", -errno, "failed");
    exit(77);
}

static void scenario_thread_exec(const char *dir, const char *self)
{
    struct thread_exec t = { dir, self };
    pthread_t thread;
    if (pthread_create(&thread, NULL, thread_exec_main, &t))
        exit(78);
    /* The exec ends this thread; the join never returns. */
    pthread_join(thread, NULL);
    exit(79);
}

/* After execveat: an execve with more than 20 args (argv is cut at 20 + "..."). */
static void scenario_after_execveat(const char *dir, const char *self)
{
    char *argv[26];
    argv[0] = "driver";
    argv[1] = "done";
    for (int i = 2; i < 25; i++) {
        char *arg = malloc(16);
        snprintf(arg, 16, "arg%d", i);
        argv[i] = arg;
    }
    argv[25] = NULL;
    char *envp[] = { NULL };
    (void)dir;
    char detail[1024];
    int used = snprintf(detail, sizeof(detail), "%s\t", self);
    for (int i = 0; i < 25; i++)
        used += snprintf(detail + used, sizeof(detail) - used, "%s%s", i ? "|" : "", argv[i]);
    report("execve-attempt", 0, detail);
    syscall(SYS_execve, self, argv, envp);
    report("execve", -errno, "failed");
    exit(76);
}

/* A UDP connect here, then one in a forked child: run inside new pid and
 * mount namespaces, the events carry namespace pids (1 here, the child's
 * own with ppid 1) and the namespace ids printed at start. */
static void scenario_fork_connect(void)
{
    char detail[256];
    struct sockaddr_in udp = { .sin_family = AF_INET, .sin_port = htons(9), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    snprintf(detail, sizeof(detail), "%d\tAF_INET 127.0.0.1 9", fd);
    report("connect", do_connect(fd, &udp, sizeof(udp)), detail);
    pid_t child = fork();
    if (child == 0) {
        report("connect", do_connect(fd, &udp, sizeof(udp)), detail);
        _exit(0);
    }
    int status;
    waitpid(child, &status, 0);
    printf("# child %d\n", (int)child);
    close(fd);
}

/* N failing ptrace(PTRACE_ATTACH) calls pinned to one CPU, then a failing
 * ptrace(PTRACE_DETACH) per line read on stdin, then the total on exit. A
 * perf buffer writes its pending count of lost samples just before the next
 * sample that fits on that CPU: once a PTRACE_DETACH event arrives, every
 * loss before it has been reported. */
static void scenario_burst(const char *count_text)
{
    long count = atol(count_text), made = 0;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(sched_getcpu(), &set);
    sched_setaffinity(0, sizeof(set), &set);
    for (long i = 0; i < count; i++, made++)
        syscall(SYS_ptrace, PTRACE_ATTACH, getpid(), 0, 0);
    printf("# burst %ld\n", made);
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof(line), stdin)) {
        syscall(SYS_ptrace, PTRACE_DETACH, getpid(), 0, 0);
        made++;
        printf("# flushed %ld\n", made);
        fflush(stdout);
    }
    printf("# total %ld\n", made);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 64;
    const char *scenario = argv[1];
    const char *dir = argc > 2 ? argv[2] : "/tmp";
    struct stat pid_ns, mnt_ns;
    printf("# pid %d\n", getpid());
    if (stat("/proc/self/ns/pid", &pid_ns) == 0 && stat("/proc/self/ns/mnt", &mnt_ns) == 0)
        printf("# ns %lu %lu\n", (unsigned long)pid_ns.st_ino, (unsigned long)mnt_ns.st_ino);
    fflush(stdout);
    if (!strcmp(scenario, "connect"))
        scenario_connect(dir);
    else if (!strcmp(scenario, "server"))
        scenario_server(dir);
    else if (!strcmp(scenario, "files"))
        scenario_files(dir);
    else if (!strcmp(scenario, "process"))
        scenario_process(dir, argv[3]);
    else if (!strcmp(scenario, "thread-exec"))
        scenario_thread_exec(dir, argv[3]);
    else if (!strcmp(scenario, "after-execveat"))
        scenario_after_execveat(dir, argv[3]);
    else if (!strcmp(scenario, "done"))
        ;
    else if (!strcmp(scenario, "fork-connect"))
        scenario_fork_connect();
    else if (!strcmp(scenario, "burst"))
        scenario_burst(argc > 2 ? argv[2] : "1000");
    else
        return 64;
    printf("# end\n");
    return 0;
}
