/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The few kernel types pipelined.bpf.c reads, declared by hand instead of a
 * generated vmlinux.h. Every struct carries preserve_access_index, so clang
 * records each field access as a CO-RE relocation and libbpf rewrites the
 * offsets against the running kernel's BTF (/sys/kernel/btf/vmlinux) at load
 * time: only the names and types of the fields we touch must match, not the
 * layout. A field that does not exist in the running kernel fails the load
 * with libbpf naming it, instead of reading garbage.
 */
#ifndef PIPELINED_KERNEL_TYPES_H
#define PIPELINED_KERNEL_TYPES_H

#include <linux/types.h>

/* This header plays vmlinux.h's role: bpf_tracing.h then names the x86-64
 * registers as the kernel's struct pt_regs does (di, si, r10, ax...). */
#define __VMLINUX_H__

typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __s32 s32;
typedef __u64 u64;
typedef __s64 s64;

#ifndef NULL
#define NULL ((void *)0)
#endif

/* x86-64 registers at a kprobe, and the inner registers that __x64_sys_*
 * receives as its single argument (the syscall's own arguments). */
struct pt_regs {
    unsigned long r15;
    unsigned long r14;
    unsigned long r13;
    unsigned long r12;
    unsigned long bp;
    unsigned long bx;
    unsigned long r11;
    unsigned long r10;
    unsigned long r9;
    unsigned long r8;
    unsigned long ax;
    unsigned long cx;
    unsigned long dx;
    unsigned long si;
    unsigned long di;
    unsigned long orig_ax;
    unsigned long ip;
    unsigned long cs;
    unsigned long flags;
    unsigned long sp;
    unsigned long ss;
} __attribute__((preserve_access_index));

/* The context of the syscalls/sys_enter_* and sys_exit_* tracepoints. The
 * per-syscall events share these layouts (args at offset 16, ret at 16). */
struct trace_entry {
    unsigned short type;
    unsigned char flags;
    unsigned char preempt_count;
    int pid;
} __attribute__((preserve_access_index));

struct trace_event_raw_sys_enter {
    struct trace_entry ent;
    long id;
    unsigned long args[6];
} __attribute__((preserve_access_index));

struct trace_event_raw_sys_exit {
    struct trace_entry ent;
    long id;
    long ret;
} __attribute__((preserve_access_index));

/* The context of sched/sched_process_exec: fired inside a successful exec,
 * after a thread other than the leader has taken the leader's id. */
struct trace_event_raw_sched_process_exec {
    struct trace_entry ent;
    unsigned int __data_loc_filename;
    int pid;
    int old_pid;
} __attribute__((preserve_access_index));

/* Namespaces: a namespace's id is its ns_common inode number, as shown by
 * `readlink /proc/PID/ns/pid`. */
struct ns_common {
    unsigned int inum;
} __attribute__((preserve_access_index));

struct pid_namespace {
    unsigned int level;
    struct ns_common ns;
} __attribute__((preserve_access_index));

struct mnt_namespace {
    struct ns_common ns;
} __attribute__((preserve_access_index));

struct nsproxy {
    struct mnt_namespace *mnt_ns;
    struct pid_namespace *pid_ns_for_children;
} __attribute__((preserve_access_index));

/* Credentials: the ids as the init user namespace sees them (what
 * bpf_get_current_uid_gid reports). */
typedef struct {
    unsigned int val;
} kuid_t;

struct cred {
    kuid_t uid;
} __attribute__((preserve_access_index));

/* A pid as seen from each namespace level it is visible in: numbers[0] is
 * the host (init namespace) view, numbers[level] the innermost one. */
struct upid {
    int nr;
    struct pid_namespace *ns;
} __attribute__((preserve_access_index));

struct pid {
    unsigned int level;
    struct upid numbers[1];
} __attribute__((preserve_access_index));

struct task_struct {
    int pid;
    int tgid;
    struct task_struct *real_parent;
    struct task_struct *group_leader;
    struct pid *thread_pid;
    struct nsproxy *nsproxy;
    const struct cred *cred;
    char comm[16];
} __attribute__((preserve_access_index));

#endif /* PIPELINED_KERNEL_TYPES_H */
