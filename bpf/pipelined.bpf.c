/* SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0-only) */
/*
 * pipelined's syscall monitor: the kernel half of the `syscall_monitor`
 * source, after a syscall monitor's trace_ret_generic() kretprobe (the
 * reference design; docs/wire-format.md describes it, this program and the
 * records it writes).
 *
 *   sys_enter_X / kprobe __x64_sys_X        sys_exit_X / kretprobe __x64_sys_X
 *   ──────────────────────────────         ───────────────────────────────────
 *   save the six raw args under the         look up + delete the saved args,
 *   thread id (exec: also copy path and     fill the 68-byte header, skip
 *   argv now, they are gone after exec)     configured retvals, hidden scopes
 *                                           and what no sink keeps, write
 *                                           typed args into a per-CPU scratch
 *                                           buffer, submit it to the perf
 *                                           array or ring buffer
 *
 * That is the entry capture (the reference's design, and what a kernel
 * without bpf_task_pt_regs (before 5.15) gets). The exit-only capture needs
 * no entry program at all: at exit, the task's saved user registers
 * (bpf_task_pt_regs) still hold the six args in the syscall convention (di,
 * si, dx, r10, r8, r9), so one program per syscall decides from the event id
 * and the return value whether a record is wanted, then reads the args and
 * builds it: no map update, no lookup of saved args. execve and execveat
 * keep the entry capture under both (a successful exec has replaced the
 * memory the args point into, and the registers, before its exit). The
 * loader chooses the capture (`capture: auto|exit|entry`) and loads only
 * the chosen programs.
 *
 * Every record is `pl_sys_context_t` then `argnum` tagged args (bpf/wire.h).
 * The loader sets the `const volatile` options before load, and chooses which
 * programs load (only the requested events, as tracepoints or kprobes); the
 * options a reload may change (the event set, skipped return values,
 * visibility) are maps it writes while the programs run.
 */
#define __PIPELINED_BPF__
#include "kernel_types.h"
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "wire.h"

/* The kernel only lets GPL-compatible programs use the probe_read helpers. */
char LICENSE[] SEC("license") = "GPL";

/* ---- Load-time options (set by the loader through .rodata) ------------- */

/* The daemon's own process: its syscalls (writing the events it reads) are
 * never traced, or every write of an event would make more events. */
const volatile u32 self_tgid = 0;

#define PL_MAX_SKIP_RETVALS 8

/* 0: perf event array (per CPU, as the reference); 1: BPF ring buffer. */
const volatile u32 use_ringbuf = 0;
/* Ring buffer: submit without waking the reader until this many bytes wait
 * (the reader also polls on a timer); a wake-up per record costs more than
 * the record. */
const volatile u64 ringbuf_wakeup_bytes = 1 << 20;

/* ---- Maps ---------------------------------------------------------------- */

/* The six raw args of a syscall in flight, from its entry to its exit.
 * Keyed by thread id (the low half of pid_tgid), where the reference keys by
 * (event_id << 32) | tgid: two threads of one process inside the same syscall
 * at once (a thread pool's connects) would share the reference's key and
 * swap or lose each other's args. A thread is inside at most one syscall, so
 * its id alone is unique; the event id is kept to reject a stale entry. */
struct pl_saved_args {
    u64 args[PL_MAX_ARGS];
    u32 event_id;
    u32 unused;
};

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 16384);
    __type(key, u32);
    __type(value, struct pl_saved_args);
} saved_args SEC(".maps");

/* Where the typed args are built: one record per CPU at a time (the syscall
 * tracepoint and kprobe programs do not nest on a CPU). Per-CPU values are
 * limited to 32 KiB. Every write starts below PL_OFF_MASK + 1 and is at most
 * PL_MAX_STRING_SIZE + 5 long, so masking an offset with PL_OFF_MASK proves
 * to the verifier that no write leaves the buffer; the logical limits below
 * keep offsets under the mask, so the mask never changes a value. */
#define PL_SCRATCH_SIZE 32768
#define PL_OFF_MASK 16383
/* A record's strings end before this; the few fixed-size args that may
 * follow the last string (at most 15 bytes) still fit under the mask. */
#define PL_RECORD_LIMIT (PL_OFF_MASK + 1 - 128)

struct pl_scratch {
    u8 data[PL_SCRATCH_SIZE];
} __attribute__((aligned(8)));

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, u32);
    __type(value, struct pl_scratch);
} scratch SEC(".maps");

/* execve/execveat: the path and argv as encoded args (STR_T then STR_ARR_T),
 * captured at entry because a successful exec replaces the memory they point
 * into before the exit runs. Same key as saved_args. (A thread other than
 * the leader that execs successfully takes the leader's id on the way:
 * tp_sched_exec moves both entries to that id before the exit looks.) */
#define PL_EXEC_BLOB_SIZE 12288
#define PL_EXEC_BLOB_LIMIT (PL_EXEC_BLOB_SIZE - 64)

struct pl_exec_blob {
    u32 size;
    u32 unused;
    u8 data[PL_EXEC_BLOB_SIZE];
};

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 256);
    __type(key, u32);
    __type(value, struct pl_exec_blob);
} exec_args SEC(".maps");

/* Per scope (enum pl_scope): non-zero drops the scope's successful events,
 * the reference's drop_syscall(scope). Failed events are always reported. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, PL_SCOPE_COUNT);
    __type(key, u32);
    __type(value, u32);
} visibility SEC(".maps");

/* Options the loader may change while the program runs (a reload), so they
 * live in maps rather than in .rodata. */

/* Return values dropped in the kernel, as the reference's `-2 || -115`. */
struct pl_settings {
    s64 skip_retvals[PL_MAX_SKIP_RETVALS];
    u32 skip_retvals_count;
    u32 unused;
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, u32);
    __type(value, struct pl_settings);
} settings SEC(".maps");

/* By event id: non-zero while the event is traced (PL_EVENT_ON | the mask
 * of the `keep` clauses that apply to it). An attached event that a reload
 * removed stays attached and is switched off here; its first program
 * returns at once. */
#define PL_MAX_EVENT_ID 512
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, PL_MAX_EVENT_ID);
    __type(key, u32);
    __type(value, u32);
} enabled SEC(".maps");

/* What the sinks downstream keep (struct pl_keep in wire.h), pushed down by
 * the loader: the clauses that `enabled`'s per-event mask selects. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, u32);
    __type(value, struct pl_keep);
} keep SEC(".maps");

/* The two transports; the unused one is shrunk to its minimum by the loader. */
struct {
    __uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
    __uint(key_size, sizeof(u32));
    __uint(value_size, sizeof(u32));
} events SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 24);
} ringbuf SEC(".maps");

/* Per CPU, for the ring buffer: `drops` counts records it had no room for
 * (the reader turns growth into `lost` records; the perf buffer counts its
 * own losses); `unchecked` counts records submitted since this CPU last
 * asked whether the reader should be woken. */
struct pl_ringbuf_cpu {
    u64 drops;
    u64 unchecked;
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, u32);
    __type(value, struct pl_ringbuf_cpu);
} ringbuf_percpu SEC(".maps");

/* ---- Entry: save the args ------------------------------------------------ */

/* `value & mask`, kept even where clang can prove it changes nothing: the
 * verifier cannot follow that proof and needs the bound in the register. */
#define PL_MASK(value, mask)                                       \
    ({                                                             \
        u64 __masked = (u64)(value);                               \
        asm volatile("%0 &= %1" : "+r"(__masked) : "i"(mask));     \
        __masked;                                                  \
    })

/* Writes encoded args at `off` into `base`; see PL_OFF_MASK for the bounds. */
struct pl_writer {
    u8 *base;
    u32 off;
    u32 limit; /* strings end before this offset */
};

static __always_inline void put_u8(struct pl_writer *w, u8 value)
{
    w->base[PL_MASK(w->off, PL_OFF_MASK)] = value;
    w->off += 1;
}

/* A tag and a u32 payload (INT_T and the flag tags). */
static __always_inline void put_u32(struct pl_writer *w, u8 tag, u32 value)
{
    u8 *p = w->base + PL_MASK(w->off, PL_OFF_MASK);
    p[0] = tag;
    __builtin_memcpy(p + 1, &value, sizeof(value));
    w->off += 5;
}

/* STR_T: s32 size counting the NUL, then the bytes. A NULL or unreadable
 * pointer, or no room left, gives size 0: the decoder's `null`. `reserve`
 * keeps room for what must follow (an array's "..." and closing tag). */
static __always_inline void put_str(struct pl_writer *w, const void *user, u32 reserve)
{
    u32 off = w->off;
    u8 *p = w->base + PL_MASK(off, PL_OFF_MASK);
    s64 room = (s64)w->limit - (s64)off - 5 - (s64)reserve;
    s32 size = 0;
    p[0] = PL_STR_T;
    if (user && room > 1) {
        u32 max = room > PL_MAX_STRING_SIZE ? PL_MAX_STRING_SIZE : (u32)room;
        long read = bpf_probe_read_user_str(p + 5, PL_MASK(max, 8191), user);
        if (read > 0)
            size = (s32)read;
    }
    __builtin_memcpy(p + 1, &size, sizeof(size));
    w->off = off + 5 + (u32)size;
}

static __always_inline void put_literal_ellipsis(struct pl_writer *w)
{
    u8 *p = w->base + PL_MASK(w->off, PL_OFF_MASK);
    s32 size = 4;
    p[0] = PL_STR_T;
    __builtin_memcpy(p + 1, &size, sizeof(size));
    p[5] = '.';
    p[6] = '.';
    p[7] = '.';
    p[8] = 0;
    w->off += 9;
}

/* STR_ARR_T: up to PL_MAX_STR_ARR_ELEMENTS strings, then "..." when there
 * were more (or no room for the next), closed by another STR_ARR_T byte. */
static __always_inline void put_str_array(struct pl_writer *w, const char *const *user)
{
    put_u8(w, PL_STR_ARR_T);
    if (user) {
        int i;
        for (i = 0; i < PL_MAX_STR_ARR_ELEMENTS; i++) {
            const char *element = NULL;
            if (bpf_probe_read_user(&element, sizeof(element), &user[i]) != 0 || !element)
                break;
            /* Room for at least a short string plus the closing "..." and tag. */
            if (w->off + 5 + 16 + 10 > w->limit) {
                put_literal_ellipsis(w);
                goto close;
            }
            put_str(w, element, 10);
        }
        if (i == PL_MAX_STR_ARR_ELEMENTS) {
            const char *more = NULL;
            bpf_probe_read_user(&more, sizeof(more), &user[i]);
            if (more)
                put_literal_ellipsis(w);
        }
    }
close:
    put_u8(w, PL_STR_ARR_T);
}

static __always_inline struct pl_scratch *get_scratch(void)
{
    u32 zero = 0;
    return bpf_map_lookup_elem(&scratch, &zero);
}

static __always_inline int is_exec(u32 id)
{
    return id == PL_EV_EXECVE || id == PL_EV_EXECVEAT;
}

/* execve(path, argv, envp) / execveat(dirfd, path, argv, envp, flags):
 * encode path and argv into a blob kept until the exit. */
static __always_inline void capture_exec(u32 tid, u32 id, const u64 *args)
{
    struct pl_scratch *s = get_scratch();
    if (!s)
        return;
    /* The scratch buffer doubles as the map value: size, unused, data. */
    struct pl_writer w = { .base = s->data + 8, .off = 0, .limit = PL_EXEC_BLOB_LIMIT };
    int first = id == PL_EV_EXECVE ? 0 : 1;
    put_str(&w, (const void *)args[first], 0);
    put_str_array(&w, (const char *const *)args[first + 1]);
    *(u32 *)s->data = w.off;
    *(u32 *)(s->data + 4) = 0;
    bpf_map_update_elem(&exec_args, &tid, s, BPF_ANY);
}

static __always_inline int save_args(u32 id, const u64 *args)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tid = (u32)pid_tgid;
    if ((u32)(pid_tgid >> 32) == self_tgid)
        return 0;
    u32 *on = bpf_map_lookup_elem(&enabled, &id);
    if (!on || !*on)
        return 0;
    /* A thread's entry stays in the map (the exit only marks it used), so
     * the common case overwrites it in place: no allocation and no LRU list
     * work (this program's cost went from 242 to 125 ns per call). */
    struct pl_saved_args *saved = bpf_map_lookup_elem(&saved_args, &tid);
    if (saved) {
#pragma unroll
        for (int i = 0; i < PL_MAX_ARGS; i++)
            saved->args[i] = args[i];
        saved->event_id = id;
    } else {
        struct pl_saved_args fresh = { .event_id = id };
#pragma unroll
        for (int i = 0; i < PL_MAX_ARGS; i++)
            fresh.args[i] = args[i];
        bpf_map_update_elem(&saved_args, &tid, &fresh, BPF_ANY);
    }
    if (is_exec(id))
        capture_exec(tid, id, args);
    return 0;
}

/* `nargs` is the syscall's own argument count: a tracepoint's context ends
 * after its last argument, and attaching a program that reads past the end
 * of the context fails (EACCES), so only the arguments that exist are read.
 * One constant-offset context load each: the verifier also refuses a load
 * through a context pointer that was moved (as an indexed loop emits). */
static __always_inline int enter_tracepoint(u32 id, int nargs, struct trace_event_raw_sys_enter *ctx)
{
    u64 args[PL_MAX_ARGS] = {};
    if (nargs > 0)
        args[0] = ctx->args[0];
    if (nargs > 1)
        args[1] = ctx->args[1];
    if (nargs > 2)
        args[2] = ctx->args[2];
    if (nargs > 3)
        args[3] = ctx->args[3];
    if (nargs > 4)
        args[4] = ctx->args[4];
    if (nargs > 5)
        args[5] = ctx->args[5];
    return save_args(id, args);
}

/* __x64_sys_X(const struct pt_regs *regs): the syscall's args live in the
 * registers the entry code saved, in the syscall convention (r10, not cx). */
static __always_inline int enter_kprobe(u32 id, struct pt_regs *ctx)
{
    struct pt_regs *regs = (struct pt_regs *)PT_REGS_PARM1(ctx);
    u64 args[PL_MAX_ARGS];
    args[0] = BPF_CORE_READ(regs, di);
    args[1] = BPF_CORE_READ(regs, si);
    args[2] = BPF_CORE_READ(regs, dx);
    args[3] = BPF_CORE_READ(regs, r10);
    args[4] = BPF_CORE_READ(regs, r8);
    args[5] = BPF_CORE_READ(regs, r9);
    return save_args(id, args);
}

/* ---- Exit: build and submit the record ----------------------------------- */

/* The reference's load_args: take the saved args and mark them used (event
 * id 0) rather than deleting them, so that the thread's next entry reuses
 * the element in place; the LRU reclaims the elements of threads gone. */
static __always_inline int load_args(u32 tid, u32 id, struct pl_saved_args *out)
{
    struct pl_saved_args *saved = bpf_map_lookup_elem(&saved_args, &tid);
    if (!saved)
        return -1; /* entry missed (attached mid-syscall) or our own process */
    if (saved->event_id != id)
        return -1; /* used already, or another syscall's (missed entry) */
    *out = *saved;
    saved->event_id = 0;
    return 0;
}

static __always_inline int skip_retval(s64 ret)
{
    u32 zero = 0;
    struct pl_settings *settings_now = bpf_map_lookup_elem(&settings, &zero);
    if (!settings_now)
        return 0;
    u32 count = settings_now->skip_retvals_count;
#pragma unroll
    for (int i = 0; i < PL_MAX_SKIP_RETVALS; i++) {
        if (i < count && ret == settings_now->skip_retvals[i])
            return 1;
    }
    return 0;
}

/* The reference's drop_syscall(scope): successful events of a hidden scope. */
static __always_inline int drop_syscall(u32 scope)
{
    u32 *hidden = bpf_map_lookup_elem(&visibility, &scope);
    return hidden && *hidden;
}

/* In a pid namespace other than the init one: the `origin: container` of
 * the record (pid_ns and mnt_ns both non-zero, see fill_process). */
static __always_inline int in_container(void)
{
    struct task_struct *task = bpf_get_current_task_btf();
    return task->group_leader->thread_pid->level > 0;
}

/* One clause of the keep condition: every field must hold (the meaning of
 * KeepClause.matches in PipelineCore). `container` is -1 until a clause
 * asks for the origin, which costs three loads. */
static __always_inline int clause_holds(const struct pl_keep_clause *c, s64 ret, int *container)
{
    if (ret < c->min || ret > c->max)
        return 0;
    u32 count = c->not_in_count;
#pragma unroll
    for (int i = 0; i < PL_KEEP_MAX_VALUES; i++) {
        if (i < count && ret == c->not_in[i])
            return 0;
    }
    count = c->in_count;
    if (count != PL_KEEP_IN_ANY) {
        int found = 0;
#pragma unroll
        for (int i = 0; i < PL_KEEP_MAX_VALUES; i++) {
            if (i < count && ret == c->in_values[i])
                found = 1;
        }
        if (!found)
            return 0;
    }
    if (c->origin != PL_KEEP_ANY) {
        if (*container < 0)
            *container = in_container();
        if ((c->origin == PL_KEEP_CONTAINER) != (*container > 0))
            return 0;
    }
    return 1;
}

/* Whether some sink can still want the event: `on` is its `enabled` value.
 * No clause bit (the condition keeps everything) costs nothing more. */
static __always_inline int keep_record(u32 on, s64 ret)
{
    u32 mask = on & ~PL_EVENT_ON;
    if (!mask)
        return 1;
    u32 zero = 0;
    struct pl_keep *condition = bpf_map_lookup_elem(&keep, &zero);
    if (!condition)
        return 1;
    int container = -1;
#pragma unroll
    for (int i = 0; i < PL_KEEP_MAX_CLAUSES; i++) {
        if ((mask & (1u << i)) && clause_holds(&condition->clauses[i], ret, &container))
            return 1;
    }
    return 0;
}

static __always_inline u32 count_args(u64 types)
{
    u32 n = 0;
#pragma unroll
    for (int i = 0; i < PL_MAX_ARGS; i++) {
        if (PL_DEC_ARG_TYPE(i, types) != PL_NONE_T)
            n++;
    }
    return n;
}

/* Header fields that describe the process: host pid/ppid always; pid/ppid
 * as the task's own pid namespace sees them (the host view in the init
 * namespace); the namespace ids only outside the init pid namespace. */
static __always_inline void fill_process(u8 *base, u64 pid_tgid)
{
    /* A BTF task pointer: plain loads, checked by the verifier, instead of a
     * probe-read helper call per field. */
    struct task_struct *task = bpf_get_current_task_btf();
    u32 host_pid = pid_tgid >> 32;
    u32 host_ppid = task->real_parent->tgid;
    /* In the init pid namespace the task's own view is the host view. */
    u32 pid_ns = 0, mnt_ns = 0, ns_pid = host_pid, ns_ppid = host_ppid;

    struct pid *leader_pid = task->group_leader->thread_pid;
    unsigned int level = leader_pid->level;
    if (level > 0) {
        /* numbers[level] has a variable offset: probe reads from here on. */
        struct pid_namespace *ns = BPF_CORE_READ(leader_pid, numbers[level].ns);
        pid_ns = BPF_CORE_READ(ns, ns.inum);
        mnt_ns = task->nsproxy->mnt_ns->ns.inum;
        ns_pid = BPF_CORE_READ(leader_pid, numbers[level].nr);
        /* The parent is visible in our namespace only if it lives in it or
         * below; a parent outside (the container runtime) reads as 0. */
        ns_ppid = 0;
        struct pid *parent_pid = task->real_parent->group_leader->thread_pid;
        unsigned int parent_level = parent_pid->level;
        if (parent_level >= level && BPF_CORE_READ(parent_pid, numbers[level].ns) == ns)
            ns_ppid = BPF_CORE_READ(parent_pid, numbers[level].nr);
    }

    /* pl_sys_context_t: ts 0, pid_id 8, mnt_id 12, host_ppid 16, host_pid 20,
     * ppid 24, pid 28, uid 32, event_id 36, argnum 40, retval 44, comm 52. */
    *(u32 *)(base + 8) = pid_ns;
    *(u32 *)(base + 12) = mnt_ns;
    *(u32 *)(base + 16) = host_ppid;
    *(u32 *)(base + 20) = host_pid;
    *(u32 *)(base + 24) = ns_ppid;
    *(u32 *)(base + 28) = ns_pid;
    /* The uid as bpf_get_current_uid_gid reports it (the init namespace's
     * view of the real uid), by plain loads rather than a helper call. */
    *(u32 *)(base + 32) = task->cred->uid.val;
    /* comm as two plain loads: the kernel keeps it NUL-terminated and
     * zero-padded (__set_task_comm), which bpf_get_current_comm's copy
     * would only repeat at the price of a helper call and a strscpy. */
    __builtin_memcpy(base + 52, task->comm, PL_TASK_COMM_LEN);
}

/* How many records a CPU submits between two looks at the ring buffer's
 * fill level. The look (bpf_ringbuf_query) reads positions that the other
 * CPUs and the reader keep writing: done per record it cost about as much
 * as the submission itself. A wake-up is then up to this many records late,
 * a few KiB against a threshold of hundreds. */
#define PL_WAKEUP_CHECK_EVERY 32

/* The transport switch, in one place (as libbpf-tools' compat.bpf.h). */
static __always_inline void submit_record(void *ctx, void *data, u32 size)
{
    if (size < PL_SYS_CONTEXT_SIZE || size > PL_SCRATCH_SIZE)
        return;
    if (use_ringbuf) {
        u32 zero = 0;
        struct pl_ringbuf_cpu *cpu = bpf_map_lookup_elem(&ringbuf_percpu, &zero);
        u64 flags = BPF_RB_NO_WAKEUP;
        /* Per-CPU values: this program is their only writer on this CPU. */
        if (cpu && ++cpu->unchecked >= PL_WAKEUP_CHECK_EVERY) {
            cpu->unchecked = 0;
            if (bpf_ringbuf_query(&ringbuf, BPF_RB_AVAIL_DATA) >= ringbuf_wakeup_bytes)
                flags = BPF_RB_FORCE_WAKEUP;
        }
        if (bpf_ringbuf_output(&ringbuf, data, size, flags) != 0 && cpu)
            cpu->drops += 1;
    } else {
        /* A full buffer is counted by the kernel and reported to the reader
         * as PERF_RECORD_LOST for this CPU. */
        bpf_perf_event_output(ctx, &events, BPF_F_CURRENT_CPU, data, size);
    }
}

/* SOCKADDR_T: the family's whole sockaddr as the kernel holds it. Only
 * `addrlen` bytes come from the caller (the rest reads as zero): an AF_UNIX
 * caller passes just the used part of sun_path. One user read in the common
 * case: up to a sockaddr_un's worth, then the family decides the size. */
static __always_inline void put_sockaddr(struct pl_writer *w, const void *user, u32 addrlen)
{
    u8 *p = w->base + PL_MASK(w->off, PL_OFF_MASK);
    u32 len = addrlen < 110 ? addrlen : 110;
    u16 family = 0;
    u32 size = 2;
    p[0] = PL_SOCKADDR_T;
    if (user && len >= 2 && bpf_probe_read_user(p + 1, PL_MASK(len, 127), user) == 0) {
        __builtin_memcpy(&family, p + 1, sizeof(family));
        if (family == 1 /* AF_UNIX */)
            size = 110;
        else if (family == 2 /* AF_INET */)
            size = 16;
        else if (family == 10 /* AF_INET6 */)
            size = 28;
        if (len < size) {
            /* Zero what the caller did not pass, then read again. */
            __builtin_memset(p + 1, 0, 110);
            bpf_probe_read_user(p + 1, PL_MASK(len, 127), user);
        }
    }
    if (size == 2)
        __builtin_memcpy(p + 1, &family, sizeof(family));
    w->off += 1 + size;
}

/* The reference's save_args_to_buffer: the typed args in declared order.
 * `types` is a compile-time constant per event, so each case folds away. */
static __always_inline void put_args(struct pl_writer *w, u32 id, u64 types,
                                     const struct pl_saved_args *a, const struct pl_exec_blob *exec)
{
#pragma unroll
    for (int i = 0; i < PL_MAX_ARGS; i++) {
        u8 type = PL_DEC_ARG_TYPE(i, types);
        switch (type) {
        case PL_NONE_T:
            break;
        case PL_INT_T:
        case PL_OPEN_FLAGS_T:
        case PL_EXEC_FLAGS_T:
        case PL_SOCK_DOM_T:
        case PL_SOCK_TYPE_T:
        case PL_UNLINKAT_FLAG_T:
        case PL_PTRACE_REQ_T:
        case PL_MOUNT_FLAG_T:
        case PL_UMOUNT_FLAG_T:
            /* execveat(dirfd, path, argv, envp, flags): the one event whose
             * declared args skip a raw one (envp). */
            if (id == PL_EV_EXECVEAT && type == PL_EXEC_FLAGS_T)
                put_u32(w, type, (u32)a->args[4]);
            else
                put_u32(w, type, (u32)a->args[i]);
            break;
        case PL_FILE_TYPE_T:
            if (is_exec(id)) {
                /* The path and argv captured at entry, already encoded. */
                int copied = 0;
                if (exec) {
                    u32 size = exec->size;
                    u8 *p = w->base + PL_MASK(w->off, PL_OFF_MASK);
                    if (size <= PL_EXEC_BLOB_SIZE &&
                        bpf_probe_read_kernel(p, PL_MASK(size, PL_OFF_MASK), exec->data) == 0) {
                        w->off += size;
                        copied = 1;
                    }
                }
                if (!copied) {
                    put_str(w, NULL, 0);
                    put_u8(w, PL_STR_ARR_T);
                    put_u8(w, PL_STR_ARR_T);
                }
                break;
            }
            put_str(w, (const void *)a->args[i], 0);
            break;
        case PL_STR_T:
            put_str(w, (const void *)a->args[i], 0);
            break;
        case PL_STR_ARR_T:
            if (!is_exec(id))
                put_str_array(w, (const char *const *)a->args[i]);
            /* exec: written with the path above */
            break;
        case PL_SOCKADDR_T: {
            /* connect/bind(fd, addr, addrlen); accept(fd, addr, *addrlen). */
            u64 len_arg = i + 1 < PL_MAX_ARGS ? a->args[i + 1] : 0;
            u32 addrlen = (u32)len_arg;
            if (id == PL_EV_ACCEPT) {
                /* A value-result pointer: the length the kernel wrote back. */
                addrlen = 0;
                if (len_arg)
                    bpf_probe_read_user(&addrlen, sizeof(addrlen), (const void *)len_arg);
            }
            put_sockaddr(w, (const void *)a->args[i], addrlen);
            break;
        }
        }
    }
}

/* Builds and submits the record of a syscall that exits with `ret`, its
 * args in `args` (and, for exec, the blob captured at entry). */
static __always_inline void submit_event(u32 id, void *ctx, s64 ret, u64 types, u64 pid_tgid,
                                         const struct pl_saved_args *args, const struct pl_exec_blob *exec)
{
    struct pl_scratch *s = get_scratch();
    if (!s)
        return;
    u8 *base = s->data;
    *(u64 *)base = bpf_ktime_get_ns();
    fill_process(base, pid_tgid);
    *(u32 *)(base + 36) = id;
    *(u32 *)(base + 40) = count_args(types);
    *(u32 *)(base + 44) = (u32)ret;
    *(u32 *)(base + 48) = (u32)((u64)ret >> 32);

    struct pl_writer w = { .base = base, .off = PL_SYS_CONTEXT_SIZE, .limit = PL_RECORD_LIMIT };
    put_args(&w, id, types, args, exec);
    submit_record(ctx, base, w.off);
}

/* The exit of the entry capture: the args its entry program saved. */
static __always_inline int trace_ret_generic(u32 id, void *ctx, s64 ret, u64 types, u32 scope)
{
    struct pl_saved_args args;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tid = (u32)pid_tgid;

    if (load_args(tid, id, &args) != 0)
        return 0;

    struct pl_exec_blob *exec = NULL;
    if (is_exec(id)) {
        exec = bpf_map_lookup_elem(&exec_args, &tid);
        /* Deleted below, once the record no longer needs it. */
    }

    /* The reference skips -2 (ENOENT) and -115 (EINPROGRESS) here. */
    if (skip_retval(ret) || (ret >= 0 && drop_syscall(scope)))
        goto done;
    /* The entry saw the event switched on; its clauses are tested here. */
    u32 *on = bpf_map_lookup_elem(&enabled, &id);
    if (on && !keep_record(*on, ret))
        goto done;

    submit_event(id, ctx, ret, types, pid_tgid, &args, exec);

done:
    if (exec)
        bpf_map_delete_elem(&exec_args, &tid);
    return 0;
}

/* The exit-only capture: everything that decides whether a record is made
 * (our own process, the event switched on, skipped return values, hidden
 * scopes, the keep clauses) is known before any arg is read, so a syscall
 * no sink wants costs a pid compare and two or three array lookups. */
static __always_inline int trace_exit_only(u32 id, void *ctx, s64 ret, u64 types, u32 scope)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if ((u32)(pid_tgid >> 32) == self_tgid)
        return 0;
    u32 *on = bpf_map_lookup_elem(&enabled, &id);
    if (!on || !*on)
        return 0;
    if (skip_retval(ret) || (ret >= 0 && drop_syscall(scope)))
        return 0;
    if (!keep_record(*on, ret))
        return 0;

    /* The user registers the syscall entry saved: its args, as the entry
     * programs read them (r10, not cx, in the syscall convention). */
    struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
    struct pl_saved_args args;
    args.args[0] = regs->di;
    args.args[1] = regs->si;
    args.args[2] = regs->dx;
    args.args[3] = regs->r10;
    args.args[4] = regs->r8;
    args.args[5] = regs->r9;
    args.event_id = id;
    args.unused = 0;
    submit_event(id, ctx, ret, types, pid_tgid, &args, NULL);
    return 0;
}

/* ---- Programs: six per event --------------------------------------------- */

/* `name` is the kernel's name for the syscall (sys_enter_<name>,
 * __x64_sys_<name>); the loader finds the programs by these names. `nargs`
 * is how many arguments the syscall itself takes. Entry capture: the
 * tp_enter/tp_exit and kp_enter/kp_exit pairs; exit-only capture: tp_ret
 * (sys_exit_<name>) or kp_ret (kretprobe). */
#define PL_TRACEPOINT_ENTER(name, nargs, id)                                            \
    SEC("tracepoint/syscalls/sys_enter_" #name)                                         \
    int tp_enter_##name(struct trace_event_raw_sys_enter *ctx)                          \
    {                                                                                   \
        return enter_tracepoint(id, nargs, ctx);                                        \
    }

#define PL_TRACEPOINT_EXIT(name, id, types, scope)                                      \
    SEC("tracepoint/syscalls/sys_exit_" #name)                                          \
    int tp_exit_##name(struct trace_event_raw_sys_exit *ctx)                            \
    {                                                                                   \
        return trace_ret_generic(id, ctx, ctx->ret, types, scope);                      \
    }

#define PL_KPROBES(name, id, types, scope)                                              \
    SEC("kprobe/__x64_sys_" #name)                                                      \
    int kp_enter_##name(struct pt_regs *ctx)                                            \
    {                                                                                   \
        return enter_kprobe(id, ctx);                                                   \
    }                                                                                   \
    SEC("kretprobe/__x64_sys_" #name)                                                   \
    int kp_exit_##name(struct pt_regs *ctx)                                             \
    {                                                                                   \
        return trace_ret_generic(id, ctx, PT_REGS_RC(ctx), types, scope);               \
    }

#define PL_EXIT_ONLY(name, id, types, scope)                                            \
    SEC("tracepoint/syscalls/sys_exit_" #name)                                          \
    int tp_ret_##name(struct trace_event_raw_sys_exit *ctx)                             \
    {                                                                                   \
        return trace_exit_only(id, ctx, ctx->ret, types, scope);                        \
    }                                                                                   \
    SEC("kretprobe/__x64_sys_" #name)                                                   \
    int kp_ret_##name(struct pt_regs *ctx)                                              \
    {                                                                                   \
        return trace_exit_only(id, ctx, PT_REGS_RC(ctx), types, scope);                 \
    }

#define PL_PAIRS(name, nargs, id, types, scope)                                         \
    PL_TRACEPOINT_ENTER(name, nargs, id)                                                \
    PL_TRACEPOINT_EXIT(name, id, types, scope)                                          \
    PL_KPROBES(name, id, types, scope)

#define PL_EVENT(name, nargs, id, types, scope)                                         \
    PL_PAIRS(name, nargs, id, types, scope)                                             \
    PL_EXIT_ONLY(name, id, types, scope)

/* The id of the syscall this thread entered, or 0. */
static __always_inline u32 entered_event(void)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct pl_saved_args *saved = bpf_map_lookup_elem(&saved_args, &tid);
    return saved ? saved->event_id : 0;
}

/* A successful execveat(2) leaves through sys_exit_execve, not
 * sys_exit_execveat (the syscall tracepoints look the number up again at
 * exit, after the new image replaced the registers): so this exit completes
 * whichever of the two the thread entered. The loader attaches it for
 * execveat too; a failed execveat still leaves through sys_exit_execveat. */
SEC("tracepoint/syscalls/sys_exit_execve")
int tp_exit_execve(struct trace_event_raw_sys_exit *ctx)
{
    /* One context load, before the branches (two would be merged into a
     * moved context pointer, which the verifier refuses). */
    long ret = ctx->ret;
    asm volatile("" : "+r"(ret));
    if (entered_event() == PL_EV_EXECVEAT)
        return trace_ret_generic(PL_EV_EXECVEAT, ctx, ret, PL_TYPES_EXECVEAT, PL_SCOPE_PROCESS);
    return trace_ret_generic(PL_EV_EXECVE, ctx, ret, PL_TYPES_EXECVE, PL_SCOPE_PROCESS);
}

/* A thread other than the leader that execs successfully leaves the syscall
 * with the leader's id (de_thread() swaps them), so its exit would look for
 * its saved args under an id that has none. sched_process_exec fires in
 * between, with both ids: move the entries to the id the exit will use.
 * Attached with execve and execveat, whether their own programs are
 * tracepoints or kprobes. */
SEC("tracepoint/sched/sched_process_exec")
int tp_sched_exec(struct trace_event_raw_sched_process_exec *ctx)
{
    u32 pid = (u32)ctx->pid;
    u32 old_pid = (u32)ctx->old_pid;
    if (pid == old_pid)
        return 0;
    struct pl_saved_args *saved = bpf_map_lookup_elem(&saved_args, &old_pid);
    if (!saved || !is_exec(saved->event_id))
        return 0;
    bpf_map_update_elem(&saved_args, &pid, saved, BPF_ANY);
    bpf_map_delete_elem(&saved_args, &old_pid);
    struct pl_exec_blob *blob = bpf_map_lookup_elem(&exec_args, &old_pid);
    if (blob) {
        bpf_map_update_elem(&exec_args, &pid, blob, BPF_ANY);
        bpf_map_delete_elem(&exec_args, &old_pid);
    }
    return 0;
}

PL_EVENT(open, 3, PL_EV_OPEN, PL_TYPES_OPEN, PL_SCOPE_FILE)
PL_EVENT(openat, 4, PL_EV_OPENAT, PL_TYPES_OPENAT, PL_SCOPE_FILE)
PL_EVENT(close, 1, PL_EV_CLOSE, PL_TYPES_CLOSE, PL_SCOPE_FILE)
PL_EVENT(unlink, 1, PL_EV_UNLINK, PL_TYPES_UNLINK, PL_SCOPE_FILE)
PL_EVENT(unlinkat, 3, PL_EV_UNLINKAT, PL_TYPES_UNLINKAT, PL_SCOPE_FILE)
PL_EVENT(rmdir, 1, PL_EV_RMDIR, PL_TYPES_RMDIR, PL_SCOPE_FILE)
PL_EVENT(chown, 3, PL_EV_CHOWN, PL_TYPES_CHOWN, PL_SCOPE_FILE)
PL_EVENT(fchownat, 5, PL_EV_FCHOWNAT, PL_TYPES_FCHOWNAT, PL_SCOPE_FILE)
PL_TRACEPOINT_ENTER(execve, 3, PL_EV_EXECVE)
PL_KPROBES(execve, PL_EV_EXECVE, PL_TYPES_EXECVE, PL_SCOPE_PROCESS)
/* The exec events have no exit-only programs: see the header. */
PL_PAIRS(execveat, 5, PL_EV_EXECVEAT, PL_TYPES_EXECVEAT, PL_SCOPE_PROCESS)
PL_EVENT(setuid, 1, PL_EV_SETUID, PL_TYPES_SETUID, PL_SCOPE_CAPABILITIES)
PL_EVENT(setgid, 1, PL_EV_SETGID, PL_TYPES_SETGID, PL_SCOPE_CAPABILITIES)
PL_EVENT(ptrace, 4, PL_EV_PTRACE, PL_TYPES_PTRACE, PL_SCOPE_CAPABILITIES)
PL_EVENT(mount, 5, PL_EV_MOUNT, PL_TYPES_MOUNT, PL_SCOPE_CAPABILITIES)
/* umount2(2) is the kernel's sys_umount (nr 166). */
PL_EVENT(umount, 2, PL_EV_UMOUNT, PL_TYPES_UMOUNT, PL_SCOPE_CAPABILITIES)
PL_EVENT(socket, 3, PL_EV_SOCKET, PL_TYPES_SOCKET, PL_SCOPE_NETWORK)
PL_EVENT(connect, 3, PL_EV_CONNECT, PL_TYPES_CONNECT, PL_SCOPE_NETWORK)
PL_EVENT(accept, 3, PL_EV_ACCEPT, PL_TYPES_ACCEPT, PL_SCOPE_NETWORK)
PL_EVENT(bind, 3, PL_EV_BIND, PL_TYPES_BIND, PL_SCOPE_NETWORK)
PL_EVENT(listen, 2, PL_EV_LISTEN, PL_TYPES_LISTEN, PL_SCOPE_NETWORK)
