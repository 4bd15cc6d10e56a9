#define _GNU_SOURCE
#include "privilege.h"

#include <dirent.h>
#include <errno.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* glibc's SIGSETXID (nptl/pthreadP.h): SIGRTMIN+1 of the kernel. */
#define PL_SIGSETXID (__SIGRTMIN + 1)
#define PL_MAX_GROUPS 64
#define PL_MAX_THREADS 4096

/* The plan every thread applies; written before the broadcast, read-only during it. */
static struct {
    int switch_ids;
    uid_t uid;
    gid_t gid;
    int ngroups;
    gid_t groups[PL_MAX_GROUPS];
    int last_cap;
} plan;

static atomic_int answered;
static atomic_int first_error;
static const char *_Atomic failed_step;

/* The kernel's struct sigaction for x86-64 and arm64 (rt_sigaction(2)). */
struct pl_kernel_sigaction {
    void (*handler)(int, siginfo_t *, void *);
    unsigned long flags;
    void (*restorer)(void);
    uint64_t mask;
};
#ifndef SA_RESTORER
#define SA_RESTORER 0x04000000
#endif

static void fail(int error, const char *step)
{
    int none = 0;
    if (atomic_compare_exchange_strong(&first_error, &none, error))
        atomic_store(&failed_step, step);
}

/* The calls, on the calling thread; async-signal-safe (raw syscalls only). */
static void apply_here(void)
{
    if (syscall(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) {
        fail(errno, "clearing the ambient set");
        return;
    }
    /* The bounding set, while CAP_SETPCAP is still effective; a process that
     * never had it (not started as root) keeps its bounding set, which
     * no_new_privs makes moot: nothing it execs can gain a capability. */
    struct __user_cap_header_struct query = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
    struct __user_cap_data_struct held[_LINUX_CAPABILITY_U32S_3];
    if (syscall(SYS_capget, &query, held) != 0) {
        fail(errno, "capget");
        return;
    }
    int can_drop_bounding = (held[0].effective & (1u << CAP_SETPCAP)) != 0;
    for (int cap = 0; can_drop_bounding && cap <= plan.last_cap; cap++) {
        long present = syscall(SYS_prctl, PR_CAPBSET_READ, cap, 0, 0, 0);
        if (present == 1 && syscall(SYS_prctl, PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) {
            fail(errno, "dropping the bounding set (needs CAP_SETPCAP)");
            return;
        }
    }
    if (plan.switch_ids) {
        uid_t r, e, s;
        /* A thread made after another's switch inherits it: nothing to do. */
        if (syscall(SYS_getresuid, &r, &e, &s) != 0 || r != plan.uid || e != plan.uid || s != plan.uid) {
            if (syscall(SYS_setgroups, plan.ngroups, plan.groups) != 0) {
                fail(errno, "setgroups (needs CAP_SETGID)");
                return;
            }
            if (syscall(SYS_setresgid, plan.gid, plan.gid, plan.gid) != 0) {
                fail(errno, "setresgid (needs CAP_SETGID)");
                return;
            }
            if (syscall(SYS_setresuid, plan.uid, plan.uid, plan.uid) != 0) {
                fail(errno, "setresuid (needs CAP_SETUID)");
                return;
            }
        }
    }
    struct __user_cap_header_struct header = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
    memset(data, 0, sizeof(data));
    if (syscall(SYS_capset, &header, data) != 0) {
        fail(errno, "capset");
        return;
    }
    if (syscall(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        fail(errno, "PR_SET_NO_NEW_PRIVS");
        return;
    }
}

static void on_signal(int signal, siginfo_t *info, void *context)
{
    (void)signal;
    (void)info;
    (void)context;
    int saved = errno;
    apply_here();
    atomic_fetch_add(&answered, 1);
    errno = saved;
}

static int last_cap(void)
{
    FILE *file = fopen("/proc/sys/kernel/cap_last_cap", "re");
    int value = CAP_LAST_CAP;
    if (file) {
        if (fscanf(file, "%d", &value) != 1)
            value = CAP_LAST_CAP;
        fclose(file);
    }
    return value;
}

static int contains(const pid_t *tids, int count, pid_t tid)
{
    for (int i = 0; i < count; i++)
        if (tids[i] == tid)
            return 1;
    return 0;
}

/* Sends the signal to every thread not yet in `signalled`; returns how many it sent, or -1. */
static int signal_new_threads(pid_t *signalled, int *count, pid_t self)
{
    DIR *dir = opendir("/proc/self/task");
    if (!dir)
        return -1;
    int sent = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        pid_t tid = (pid_t)atoi(entry->d_name);
        if (tid <= 0 || tid == self || contains(signalled, *count, tid))
            continue;
        if (*count == PL_MAX_THREADS) {
            closedir(dir);
            errno = E2BIG;
            return -1;
        }
        if (syscall(SYS_tgkill, getpid(), tid, PL_SIGSETXID) == 0) {
            signalled[(*count)++] = tid;
            sent++;
        } else if (errno != ESRCH) { /* ESRCH: it has just exited */
            closedir(dir);
            return -1;
        }
    }
    closedir(dir);
    return sent;
}

int pl_drop_privileges(const struct pl_drop_plan *request, struct pl_drop_result *result)
{
    memset(result, 0, sizeof(*result));
    if (request->ngroups < 0 || request->ngroups > PL_MAX_GROUPS) {
        result->error = EINVAL;
        result->step = "too many supplementary groups";
        return -1;
    }
    plan.switch_ids = request->switch_ids;
    plan.uid = request->uid;
    plan.gid = request->gid;
    plan.ngroups = request->ngroups;
    if (request->ngroups > 0)
        memcpy(plan.groups, request->groups, sizeof(gid_t) * (size_t)request->ngroups);
    plan.last_cap = last_cap();
    atomic_store(&answered, 0);
    atomic_store(&first_error, 0);
    atomic_store(&failed_step, NULL);

    /* Borrow SIGSETXID. The kernel needs a restorer (SA_RESTORER): glibc's
     * handler for it was installed with glibc's own, which is reused. */
    struct pl_kernel_sigaction old, mine;
    if (syscall(SYS_rt_sigaction, PL_SIGSETXID, NULL, &old, sizeof(uint64_t)) != 0) {
        result->error = errno;
        result->step = "reading the SIGSETXID action";
        return -1;
    }
    if (!(old.flags & SA_RESTORER)) {
        result->error = ENOTSUP;
        result->step = "glibc's SIGSETXID action has no restorer to reuse";
        return -1;
    }
    mine.handler = on_signal;
    mine.flags = SA_SIGINFO | SA_RESTART | SA_RESTORER;
    mine.restorer = old.restorer;
    mine.mask = ~(uint64_t)0; /* one handler at a time per thread */
    if (syscall(SYS_rt_sigaction, PL_SIGSETXID, &mine, NULL, sizeof(uint64_t)) != 0) {
        result->error = errno;
        result->step = "borrowing SIGSETXID";
        return -1;
    }

    static pid_t signalled[PL_MAX_THREADS];
    int count = 0;
    pid_t self = (pid_t)syscall(SYS_gettid);
    int status = 0;
    /* Until a pass finds no new thread: one made meanwhile by a thread that
     * had not answered yet would not have inherited the drop. */
    for (int pass = 0; pass < 100; pass++) {
        int sent = signal_new_threads(signalled, &count, self);
        if (sent < 0) {
            fail(errno, "signalling the threads");
            break;
        }
        /* 5 s for every signalled thread to answer. */
        struct timespec pause = { 0, 1000000 };
        int waited = 0;
        while (atomic_load(&answered) < count && waited < 5000) {
            nanosleep(&pause, NULL);
            waited++;
        }
        if (atomic_load(&answered) < count) {
            fail(ETIMEDOUT, "waiting for every thread to answer");
            break;
        }
        if (sent == 0)
            break;
    }
    /* The calling thread, which no signal reaches. */
    apply_here();
    syscall(SYS_rt_sigaction, PL_SIGSETXID, &old, NULL, sizeof(uint64_t));
    result->threads = atomic_load(&answered) + 1;
    result->error = atomic_load(&first_error);
    result->step = atomic_load(&failed_step);
    if (result->error != 0)
        status = -1;
    return status;
}

int pl_allow_nice(int floor)
{
    /* The floor is 20 - RLIMIT_NICE (setrlimit(2)). */
    rlim_t needed = (rlim_t)(20 - floor);
    struct rlimit limit;
    if (getrlimit(RLIMIT_NICE, &limit) != 0)
        return -1;
    if (limit.rlim_cur >= needed)
        return 0;
    limit.rlim_cur = needed;
    if (limit.rlim_max < needed)
        limit.rlim_max = needed;
    return setrlimit(RLIMIT_NICE, &limit);
}

/*
 * What the running pipeline calls once privileges are dropped: the syscalls
 * seen (bpftrace on raw_syscalls:sys_enter) in runs with the kernel source,
 * file rotation, archive sealing and retention, socket clients, the metrics
 * endpoint, reloads (applied, refused and failed) and shutdown, plus the NATS
 * client's networking and what the Swift runtime, libdispatch and glibc use
 * on paths those runs may not reach (memory, time, threads, signals).
 * Absent on purpose: execve and execveat, fork and vfork, ptrace, mount,
 * setuid and the other id changes, module loading, kexec, reboot,
 * perf_event_open (nothing attaches after the drop), unshare, setns,
 * process_vm_*, keyctl, io_uring, userfaultfd.
 */
static const int pl_allowed_syscalls[] = {
    /* files and directories */
    SYS_read, SYS_write, SYS_readv, SYS_writev, SYS_pread64, SYS_pwrite64, SYS_lseek, SYS_close,
    SYS_openat, SYS_open, SYS_newfstatat, SYS_fstat, SYS_stat, SYS_lstat, SYS_statx, SYS_access,
    SYS_faccessat, SYS_faccessat2, SYS_readlink, SYS_readlinkat, SYS_getdents64, SYS_fcntl, SYS_flock,
    SYS_fsync, SYS_fdatasync, SYS_ftruncate, SYS_rename, SYS_renameat, SYS_renameat2, SYS_mkdir,
    SYS_mkdirat, SYS_rmdir, SYS_unlink, SYS_unlinkat, SYS_chmod, SYS_fchmod, SYS_fchmodat, SYS_dup,
    SYS_dup2, SYS_dup3, SYS_pipe2, SYS_ioctl, SYS_getcwd, SYS_statfs, SYS_fstatfs, SYS_fadvise64,
    /* memory */
    SYS_brk, SYS_mmap, SYS_munmap, SYS_mprotect, SYS_mremap, SYS_madvise, SYS_membarrier,
    /* threads, time, scheduling */
    SYS_clone, SYS_clone3, SYS_futex, SYS_set_robust_list, SYS_get_robust_list, SYS_rseq,
    SYS_set_tid_address, SYS_gettid, SYS_getpid, SYS_getppid, SYS_exit, SYS_exit_group, SYS_sched_yield,
    SYS_sched_getaffinity, SYS_sched_setaffinity, SYS_setpriority, SYS_getpriority, SYS_nanosleep,
    SYS_clock_nanosleep, SYS_clock_gettime, SYS_clock_getres, SYS_gettimeofday, SYS_getrusage,
    SYS_getrlimit, SYS_prlimit64, SYS_times, SYS_uname, SYS_getrandom, SYS_prctl, SYS_arch_prctl,
    SYS_sysinfo,
    /* ids (reads only) and capabilities (reads, or dropping what is left) */
    SYS_getuid, SYS_geteuid, SYS_getgid, SYS_getegid, SYS_getresuid, SYS_getresgid, SYS_getgroups,
    SYS_capget,
    /* signals */
    SYS_rt_sigaction, SYS_rt_sigprocmask, SYS_rt_sigreturn, SYS_rt_sigsuspend, SYS_rt_sigtimedwait,
    SYS_sigaltstack, SYS_tgkill, SYS_tkill, SYS_kill, SYS_signalfd4,
    /* waiting */
    SYS_epoll_create, SYS_epoll_create1, SYS_epoll_ctl, SYS_epoll_wait, SYS_epoll_pwait, SYS_epoll_pwait2,
    SYS_poll, SYS_ppoll, SYS_select, SYS_pselect6, SYS_eventfd2, SYS_timerfd_create,
    SYS_timerfd_settime, SYS_timerfd_gettime,
    /* sockets: the socket sink, the metrics endpoint, NATS */
    SYS_socket, SYS_socketpair, SYS_bind, SYS_listen, SYS_accept, SYS_accept4, SYS_connect,
    SYS_shutdown, SYS_getsockname, SYS_getpeername, SYS_setsockopt, SYS_getsockopt, SYS_sendto,
    SYS_recvfrom, SYS_sendmsg, SYS_recvmsg, SYS_sendmmsg, SYS_recvmmsg,
    /* eBPF maps through open descriptors (a reload's event set, skip_retvals) */
    SYS_bpf,
};

int pl_install_seccomp(int kill)
{
    enum { count = sizeof(pl_allowed_syscalls) / sizeof(pl_allowed_syscalls[0]) };
    /* arch check (3) + load nr (1) + one jump per syscall + deny + allow; x32
     * calls (nr | 0x40000000) match no entry. */
    struct sock_filter filter[4 + count + 2];
    int at = 0;
    unsigned deny = kill ? SECCOMP_RET_KILL_PROCESS : SECCOMP_RET_LOG;
    filter[at++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    /* Another ABI: its numbers mean other calls. */
    filter[at++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
    filter[at++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, deny);
    filter[at++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
    for (int i = 0; i < count; i++) {
        /* Equal: jump to the allow at the end; else on to the next. */
        int to_allow = count - i;
        filter[at++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)pl_allowed_syscalls[i], (unsigned char)to_allow, 0);
    }
    filter[at++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, deny);
    filter[at++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    struct sock_fprog program = { .len = (unsigned short)at, .filter = filter };
    long result = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC | (kill ? 0 : SECCOMP_FILTER_FLAG_LOG), &program);
    if (result > 0) {
        /* TSYNC names the thread it could not synchronize. */
        errno = ESRCH;
        return -1;
    }
    return result == 0 ? 0 : -1;
}
