#ifndef PIPELINED_PRIVILEGE_H
#define PIPELINED_PRIVILEGE_H

#include <stdint.h>
#include <sys/types.h>

/*
 * Dropping privileges in every thread of the process.
 *
 * Linux keeps capabilities, the bounding and ambient sets, no_new_privs and
 * the uid/gid per thread: capset(2), prctl(2) and the raw setres*id calls
 * change only the calling thread. By the time the pipeline runs, it has many
 * threads (stage threads, the Swift cooperative pool, NIO's event loop), so
 * the drop is broadcast the way glibc broadcasts setuid(2): each thread is
 * sent a signal whose handler makes the same calls on itself. The signal is
 * glibc's own SIGSETXID (SIGRTMIN+1, 33), borrowed for the broadcast and given
 * back after: it is the one signal no thread blocks (glibc removes it from
 * every mask it is asked to set; libdispatch's workers block all others).
 */

/// What pl_drop_privileges makes every thread do.
struct pl_drop_plan {
    /// Non-zero: also switch to uid, gid and the supplementary groups below.
    int switch_ids;
    uid_t uid;
    gid_t gid;
    int ngroups;
    const gid_t *groups;
};

/// How a drop went: 0 in error, or the errno of the first step that failed and its name.
struct pl_drop_result {
    int error;
    const char *step;
    /// Threads that made the calls (the caller included).
    int threads;
};

/// Clears the ambient set, empties the bounding set, optionally switches
/// ids, empties the effective, permitted and inheritable sets and sets
/// no_new_privs, in every thread of the process, then returns. Not
/// reentrant: one call at a time, and no other code may call setuid(2) and
/// friends meanwhile. Returns 0, or -1 with `result` saying what failed.
int pl_drop_privileges(const struct pl_drop_plan *plan, struct pl_drop_result *result);

/// Raises RLIMIT_NICE (soft and hard) so that the process may lower a
/// thread's nice value down to `floor` without CAP_SYS_NICE; raising the hard
/// limit needs CAP_SYS_RESOURCE. Returns 0, or -1 with errno.
int pl_allow_nice(int floor);

/// Installs the seccomp allow-list of the running pipeline (privilege.c
/// lists it) in every thread (SECCOMP_FILTER_FLAG_TSYNC): any other syscall
/// is logged (`kill` 0: SECCOMP_RET_LOG, the call goes ahead) or kills the
/// process (`kill` 1). Needs no_new_privs (pl_drop_privileges sets it).
/// Returns 0, or -1 with errno (a thread that TSYNC could not reach: ESRCH).
int pl_install_seccomp(int kill);

#endif
