/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The wire layout between pipelined's eBPF program and its user-space decoder
 * (docs/wire-format.md). This header is the single source of truth: the kernel
 * program includes it, and the Swift test suite imports it through the CBPF
 * module and checks PipelineCore's decoder tables against every value here.
 *
 * It must stay free of kernel headers so that both sides can include it.
 */
#ifndef PIPELINED_WIRE_H
#define PIPELINED_WIRE_H

#ifndef __PIPELINED_BPF__
#include <stdint.h>
typedef uint8_t pl_u8;
typedef uint32_t pl_u32;
typedef int64_t pl_s64;
typedef uint64_t pl_u64;
#else
typedef __u8 pl_u8;
typedef __u32 pl_u32;
typedef __s64 pl_s64;
typedef __u64 pl_u64;
#endif

#define PL_TASK_COMM_LEN 16
#define PL_MAX_ARGS 6

/* The context header every record starts with, as in the reference's
 * sys_context_t: packed, little-endian, 68 bytes. */
typedef struct __attribute__((__packed__)) pl_sys_context {
    pl_u64 ts;        /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    pl_u32 pid_id;    /* pid namespace inode, 0 in the init pid namespace */
    pl_u32 mnt_id;    /* mount namespace inode, 0 in the init pid namespace */
    pl_u32 host_ppid;
    pl_u32 host_pid;
    pl_u32 ppid;      /* as the task's pid namespace sees it: host_ppid in the init
                       * namespace, 0 for a parent outside the task's namespace */
    pl_u32 pid;       /* as the task's pid namespace sees it: host_pid in the init namespace */
    pl_u32 uid;
    pl_u32 event_id;
    pl_u32 argnum;
    pl_s64 retval;
    char comm[PL_TASK_COMM_LEN];
} pl_sys_context_t;

#define PL_SYS_CONTEXT_SIZE 68

/* Argument tags: one byte before each argument's payload. */
enum pl_arg_type {
    PL_NONE_T = 0,
    PL_INT_T = 1,          /* s32 */
    PL_STR_T = 10,         /* s32 size (with NUL), then size bytes */
    PL_STR_ARR_T = 11,     /* STR_T elements, closed by another 11 */
    PL_SOCKADDR_T = 12,    /* raw sockaddr: 110 (unix), 16 (inet), 28 (inet6) or 2 bytes */
    PL_OPEN_FLAGS_T = 13,  /* u32 */
    PL_EXEC_FLAGS_T = 14,  /* u32 */
    PL_SOCK_DOM_T = 15,    /* u32 */
    PL_SOCK_TYPE_T = 16,   /* u32 */
    PL_FILE_TYPE_T = 17,   /* declared type of a path; written as STR_T */
    PL_UNLINKAT_FLAG_T = 19, /* u32 */
    PL_PTRACE_REQ_T = 23,  /* u32 */
    PL_MOUNT_FLAG_T = 24,  /* u32 */
    PL_UMOUNT_FLAG_T = 25, /* u32 */
};

#define PL_MAX_STR_ARR_ELEMENTS 20
#define PL_MAX_STRING_SIZE 4096

#define PL_ENC_ARG_TYPE(n, type) ((pl_u64)(type) << (8 * (n)))
#define PL_ARG_TYPE0(type) PL_ENC_ARG_TYPE(0, type)
#define PL_ARG_TYPE1(type) PL_ENC_ARG_TYPE(1, type)
#define PL_ARG_TYPE2(type) PL_ENC_ARG_TYPE(2, type)
#define PL_ARG_TYPE3(type) PL_ENC_ARG_TYPE(3, type)
#define PL_ARG_TYPE4(type) PL_ENC_ARG_TYPE(4, type)
#define PL_ARG_TYPE5(type) PL_ENC_ARG_TYPE(5, type)
#define PL_DEC_ARG_TYPE(n, types) (((types) >> (8 * (n))) & 0xFF)

/* Scopes: the index into the visibility map (the reference's drop_syscall). */
enum pl_scope {
    PL_SCOPE_FILE = 0,
    PL_SCOPE_PROCESS = 1,
    PL_SCOPE_NETWORK = 2,
    PL_SCOPE_CAPABILITIES = 3,
    PL_SCOPE_COUNT = 4,
};

/* Event ids: the x86-64 syscall numbers. */
enum pl_event_id {
    PL_EV_OPEN = 2,
    PL_EV_CLOSE = 3,
    PL_EV_SOCKET = 41,
    PL_EV_CONNECT = 42,
    PL_EV_ACCEPT = 43,
    PL_EV_BIND = 49,
    PL_EV_LISTEN = 50,
    PL_EV_EXECVE = 59,
    PL_EV_RMDIR = 84,
    PL_EV_UNLINK = 87,
    PL_EV_CHOWN = 92,
    PL_EV_PTRACE = 101,
    PL_EV_SETUID = 105,
    PL_EV_SETGID = 106,
    PL_EV_MOUNT = 165,
    PL_EV_UMOUNT = 166, /* umount2 */
    PL_EV_OPENAT = 257,
    PL_EV_FCHOWNAT = 260,
    PL_EV_UNLINKAT = 263,
    PL_EV_EXECVEAT = 322,
};

/* Declared argument types per event, as the reference's ARG_TYPEn masks. */
#define PL_TYPES_OPEN     (PL_ARG_TYPE0(PL_FILE_TYPE_T) | PL_ARG_TYPE1(PL_OPEN_FLAGS_T))
#define PL_TYPES_OPENAT   (PL_ARG_TYPE0(PL_INT_T) | PL_ARG_TYPE1(PL_FILE_TYPE_T) | PL_ARG_TYPE2(PL_OPEN_FLAGS_T))
#define PL_TYPES_CLOSE    (PL_ARG_TYPE0(PL_INT_T))
#define PL_TYPES_UNLINK   (PL_ARG_TYPE0(PL_FILE_TYPE_T))
#define PL_TYPES_UNLINKAT (PL_ARG_TYPE0(PL_INT_T) | PL_ARG_TYPE1(PL_FILE_TYPE_T) | PL_ARG_TYPE2(PL_UNLINKAT_FLAG_T))
#define PL_TYPES_RMDIR    (PL_ARG_TYPE0(PL_FILE_TYPE_T))
#define PL_TYPES_CHOWN    (PL_ARG_TYPE0(PL_FILE_TYPE_T) | PL_ARG_TYPE1(PL_INT_T) | PL_ARG_TYPE2(PL_INT_T))
#define PL_TYPES_FCHOWNAT (PL_ARG_TYPE0(PL_INT_T) | PL_ARG_TYPE1(PL_FILE_TYPE_T) | PL_ARG_TYPE2(PL_INT_T) | PL_ARG_TYPE3(PL_INT_T) | PL_ARG_TYPE4(PL_INT_T))
#define PL_TYPES_EXECVE   (PL_ARG_TYPE0(PL_FILE_TYPE_T) | PL_ARG_TYPE1(PL_STR_ARR_T))
#define PL_TYPES_EXECVEAT (PL_ARG_TYPE0(PL_INT_T) | PL_ARG_TYPE1(PL_FILE_TYPE_T) | PL_ARG_TYPE2(PL_STR_ARR_T) | PL_ARG_TYPE3(PL_EXEC_FLAGS_T))
#define PL_TYPES_SETUID   (PL_ARG_TYPE0(PL_INT_T))
#define PL_TYPES_SETGID   (PL_ARG_TYPE0(PL_INT_T))
#define PL_TYPES_PTRACE   (PL_ARG_TYPE0(PL_PTRACE_REQ_T) | PL_ARG_TYPE1(PL_INT_T))
#define PL_TYPES_MOUNT    (PL_ARG_TYPE0(PL_STR_T) | PL_ARG_TYPE1(PL_STR_T) | PL_ARG_TYPE2(PL_STR_T) | PL_ARG_TYPE3(PL_MOUNT_FLAG_T) | PL_ARG_TYPE4(PL_STR_T))
#define PL_TYPES_UMOUNT   (PL_ARG_TYPE0(PL_STR_T) | PL_ARG_TYPE1(PL_UMOUNT_FLAG_T))
#define PL_TYPES_SOCKET   (PL_ARG_TYPE0(PL_SOCK_DOM_T) | PL_ARG_TYPE1(PL_SOCK_TYPE_T) | PL_ARG_TYPE2(PL_INT_T))
#define PL_TYPES_CONNECT  (PL_ARG_TYPE0(PL_INT_T) | PL_ARG_TYPE1(PL_SOCKADDR_T))
#define PL_TYPES_ACCEPT   (PL_ARG_TYPE0(PL_INT_T) | PL_ARG_TYPE1(PL_SOCKADDR_T))
#define PL_TYPES_BIND     (PL_ARG_TYPE0(PL_INT_T) | PL_ARG_TYPE1(PL_SOCKADDR_T))
#define PL_TYPES_LISTEN   (PL_ARG_TYPE0(PL_INT_T) | PL_ARG_TYPE1(PL_INT_T))

/* ---- Loader to program: the pushed-down keep condition -------------------
 *
 * What the sinks downstream can still want (docs/wire-format.md, "Pushdown"),
 * tested at exit before a record is built. The `enabled` map's value per
 * event is PL_EVENT_ON | a mask of the clauses that apply to the event: no
 * bit set keeps everything (no test at all); otherwise a record is kept when
 * one of those clauses holds. A clause is a conjunction of its fields. */
#define PL_EVENT_ON 0x80000000u
#define PL_KEEP_MAX_CLAUSES 8
#define PL_KEEP_MAX_VALUES 8

enum pl_keep_origin {
    PL_KEEP_ANY = 0,
    PL_KEEP_HOST = 1,      /* in the init pid namespace */
    PL_KEEP_CONTAINER = 2, /* in another pid namespace */
};

/* `in_count` PL_KEEP_IN_ANY: the retval may be any value (within bounds). */
#define PL_KEEP_IN_ANY 0xFFFFFFFFu

struct pl_keep_clause {
    pl_s64 min;                            /* inclusive */
    pl_s64 max;                            /* inclusive */
    pl_s64 in_values[PL_KEEP_MAX_VALUES];  /* the retval is one of the first in_count */
    pl_s64 not_in[PL_KEEP_MAX_VALUES];     /* and none of the first not_in_count */
    pl_u32 in_count;
    pl_u32 not_in_count;
    pl_u32 origin;                         /* enum pl_keep_origin */
    pl_u32 unused;
};

/* The keep map's one value. */
struct pl_keep {
    struct pl_keep_clause clauses[PL_KEEP_MAX_CLAUSES];
};

#endif /* PIPELINED_WIRE_H */
