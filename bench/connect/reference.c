/*
 * The C + libbpf reference consumer of the storm benchmark (run.sh, issue
 * #13): what plain C gets from the same kernel path as pipelined, so that
 * the daemon's figures can be read against it in one run.
 *
 *     reference -o OUTPUT [-b OBJECT] [-r direct|libbpf] [-s RING_BYTES] [-p BOOST] [-f [-u]]
 *
 * Kernel side, as `pipelined run` sets it up for a syscall_monitor with
 * `events: [connect]` and default settings on this kernel (tracepoints,
 * exit-only capture, ring buffer): the same object (bpf/pipelined.bpf.c,
 * compiled by build-reference.sh with the BPFObjectPlugin's clang and
 * flags), the same rodata (self_tgid = this process, use_ringbuf = 1,
 * ringbuf_wakeup_bytes = a sixteenth of the ring), the ring sized 8 MiB
 * (ringbuf_bytes' default; -s another power of two), only tp_ret_connect loaded
 * and attached to syscalls/sys_exit_connect, and the same map values:
 * settings.skip_retvals [-2, -115], the keep map empty (no clause), enabled
 * PL_EVENT_ON for connect and 0 for the other nineteen events, every scope
 * visible.
 *
 * -f keeps failures only (retval < 0), as run.sh's PIPELINE=failures (a
 * retval filter `success: false` before the sink): the test in user space
 * before formatting, and pushed down as the daemon pushes it, a keep clause
 * `retval <= -1` (enabled PL_EVENT_ON | bit 0), so that the kernel submits
 * only failures; -u leaves the kernel's test out (settings.pushdown: false).
 *
 * User side, per record: decode it (bench/codec/ndjson.h, the codec
 * baseline's decoder), format its NDJSON line (the same file's formatter,
 * byte-identical to pipelined's file sink; node = the host name, time =
 * ktime + a wall-clock offset measured once at start, as the daemon does)
 * into a 192 KiB buffer that is written to OUTPUT with write(2) whenever it
 * is full and at least every 100 ms (the daemon's flush_interval): about
 * the daemon's write, one batch of 512 records (with 1 MiB writes the
 * reference spent four times the system time, BENCHMARKS.md). One
 * thread does all of it, at nice -BOOST (default 4, the daemon's
 * settings.priority_boost).
 *
 * Two readers of the ring buffer (-r):
 *
 *   direct  (default) the daemon's RingConsumer design, written here after
 *           the kernel's ring protocol: the data area mapped once, the map
 *           fd registered edge-triggered in epoll (the reader sleeps until
 *           the program forces a wake-up, a sixteenth of the ring waiting,
 *           or 100 ms pass), the consumer position stored every 64 records
 *           rather than after each one.
 *   libbpf  libbpf's ring_buffer__new/ring_buffer__poll as it comes: the
 *           data area mapped twice (a wrapped record reads as one piece),
 *           level-triggered epoll (under a storm every poll returns at once
 *           with what is there), the consumer position stored per record.
 *
 * What is left out, against the daemon: no batches, queue or second thread
 * between reading and writing (the daemon's source thread hands batches of
 * up to 512 records to the file sink's thread, which writes each batch with
 * one write(2)); no metrics, logging or reload; lost records (growth of the
 * program's per-CPU drop counters) are counted once, at the end, not turned
 * into `lost` lines every 100 ms.
 *
 * Prints "reference: attached ..." to stderr once tracing, and at SIGINT or
 * SIGTERM detaches, drains the ring, writes what is buffered, fsyncs and
 * prints "reference: stopped: records=N lost=N malformed=N filtered=N bytes=N"
 * (records: lines written; filtered: successes -f dropped in user space).
 */
#define _GNU_SOURCE
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "../../bpf/wire.h"
#include "../codec/ndjson.h"

#ifndef OUT_FLUSH
#define OUT_FLUSH (192 << 10) /* cc -DOUT_FLUSH=...: REFERENCE_CFLAGS of build-reference.sh */
#endif
#define OUT_CAP (OUT_FLUSH + FORMAT_MAX)
#define FLUSH_INTERVAL_NS 100000000LL /* the daemon's default flush_interval */
#define RELEASE_EVERY 64              /* RingConsumer.releaseEvery */
#define MAX_WRAPPED (64 * 1024)       /* RingConsumer.maxWrappedRecord */

/* The `settings` map's value (struct pl_settings in the program). */
struct pl_settings {
    int64_t skip_retvals[8];
    uint32_t skip_retvals_count;
    uint32_t unused;
};

/* One CPU's slot of `ringbuf_percpu` (struct pl_ringbuf_cpu). */
struct pl_ringbuf_cpu {
    uint64_t drops;
    uint64_t unchecked;
};

/* The event ids of the daemon's catalog: it writes `enabled` for each. */
static const uint32_t catalog[] = {
    2, 3, 41, 42, 43, 49, 50, 59, 84, 87, 92, 101, 105, 106, 165, 166, 257, 260, 263, 322,
};

static volatile sig_atomic_t stopping;

static int out_fd = -1;
static const char *out_path;
static char *out, *o;
static int64_t wall_offset_ns;
static unsigned long records, malformed, bytes_written, filtered;
static int failures_only;

static void on_signal(int sig) { (void)sig; stopping = 1; }

static void die(const char *what, int err)
{
    fprintf(stderr, "reference: %s: %s\n", what, strerror(err < 0 ? -err : err));
    exit(1);
}

static int64_t clock_ns(clockid_t clock)
{
    struct timespec t;
    clock_gettime(clock, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Wall minus monotonic time, from the tightest of five brackets (as the
 * daemon's Clock.monotonicToWallOffsetNs). */
static int64_t monotonic_to_wall_offset(void)
{
    int64_t best = INT64_MAX, offset = 0;
    for (int i = 0; i < 5; i++) {
        int64_t before = clock_ns(CLOCK_MONOTONIC);
        int64_t wall = clock_ns(CLOCK_REALTIME);
        int64_t after = clock_ns(CLOCK_MONOTONIC);
        if (after - before < best) {
            best = after - before;
            offset = wall - (before + (after - before) / 2);
        }
    }
    return offset;
}

static void flush_output(void)
{
    const char *p = out;
    size_t n = (size_t)(o - out);
    while (n) {
        ssize_t w = write(out_fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            die(out_path, errno);
        }
        p += w;
        n -= (size_t)w;
        bytes_written += (unsigned long)w;
    }
    o = out;
}

/* The per-record work: decode, format into the buffer, write when full. */
static void on_record(const void *data, size_t size)
{
    struct event e;
    if (decode(data, size, &e) != 0 || e.event_id != PL_EV_CONNECT) {
        malformed++;
        return;
    }
    if (failures_only && e.retval >= 0) {
        filtered++;
        return;
    }
    o = format(o, &e, wall_offset_ns);
    records++;
    if (o - out >= OUT_FLUSH)
        flush_output();
}

/* ---- the direct reader ----------------------------------------------------
 *
 * The ring map's layout (kernel/bpf/ringbuf.c): page 0, read-write, holds
 * the consumer position; from page 1 on, read-only, the producer position's
 * page and then the data area. A record is an 8-byte header (u32 length with
 * the busy and discard bits on top, u32 page offset) and the length's bytes,
 * the whole rounded up to 8. Positions only grow; the data offset is the
 * position modulo the (power of two) size. */
#define RB_BUSY (1u << 31)
#define RB_DISCARD (1u << 30)
#define RB_HEADER 8

struct direct_ring {
    size_t size, page;
    uint64_t *consumer_pos;   /* in the read-write page */
    const uint64_t *producer_pos;
    const uint8_t *data;
    void *producer_map;
    int epoll_fd;
    uint8_t *scratch;         /* a record that wraps past the end, in one piece */
};

static void direct_open(struct direct_ring *r, int map_fd, size_t size)
{
    r->size = size;
    r->page = (size_t)sysconf(_SC_PAGESIZE);
    void *consumer = mmap(NULL, r->page, PROT_READ | PROT_WRITE, MAP_SHARED, map_fd, 0);
    if (consumer == MAP_FAILED)
        die("mmap of the ring's consumer page", errno);
    /* Mapped once: libbpf maps the data area twice, back to back, so that a
     * wrapped record reads as one piece, and every page counts twice in the
     * resident size; the daemon maps it once and copies the rare wrapped
     * record, as here. */
    r->producer_map = mmap(NULL, r->page + size, PROT_READ, MAP_SHARED, map_fd, (off_t)r->page);
    if (r->producer_map == MAP_FAILED)
        die("mmap of the ring", errno);
    r->consumer_pos = consumer;
    r->producer_pos = r->producer_map;
    r->data = (const uint8_t *)r->producer_map + r->page;
    r->scratch = malloc(MAX_WRAPPED);
    /* Edge-triggered: the map's poll reports readable whenever any record
     * waits, so a level-triggered wait returns at once all through a storm
     * and the reader loops on handfuls. Registered edge-triggered, it
     * sleeps until the program forces a wake-up or the timeout passes. */
    r->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = { .events = EPOLLIN | EPOLLET };
    if (r->epoll_fd < 0 || epoll_ctl(r->epoll_fd, EPOLL_CTL_ADD, map_fd, &ev) != 0)
        die("epoll on the ring", errno);
}

/* Hands every committed record to on_record(), until the ring is empty or
 * the next record is still being written. The consumer position goes back
 * to the kernel every RELEASE_EVERY records and on return: every producer
 * reads it when it reserves room, so storing it per record moves its cache
 * line to this CPU and back for each record. */
static void direct_consume(struct direct_ring *r)
{
    uint64_t mask = r->size - 1;
    uint64_t pos = __atomic_load_n(r->consumer_pos, __ATOMIC_ACQUIRE);
    int unreleased = 0;
    for (;;) {
        uint64_t end = __atomic_load_n(r->producer_pos, __ATOMIC_ACQUIRE);
        if (pos >= end)
            break;
        while (pos < end) {
            size_t off = (size_t)(pos & mask);
            uint32_t word = __atomic_load_n((const uint32_t *)(r->data + off), __ATOMIC_ACQUIRE);
            if (word & RB_BUSY)
                goto done; /* reserved, not submitted yet: next time */
            size_t len = word & ~(RB_BUSY | RB_DISCARD);
            if (!(word & RB_DISCARD)) {
                size_t start = (off + RB_HEADER) & mask;
                if (start + len <= r->size) {
                    on_record(r->data + start, len);
                } else if (len <= MAX_WRAPPED && len <= r->size) {
                    size_t first = r->size - start;
                    memcpy(r->scratch, r->data + start, first);
                    memcpy(r->scratch + first, r->data, len - first);
                    on_record(r->scratch, len);
                } else {
                    malformed++;
                }
            }
            pos += (len + RB_HEADER + 7) & ~(uint64_t)7;
            if (++unreleased == RELEASE_EVERY) {
                __atomic_store_n(r->consumer_pos, pos, __ATOMIC_RELEASE);
                unreleased = 0;
            }
        }
    }
done:
    if (unreleased)
        __atomic_store_n(r->consumer_pos, pos, __ATOMIC_RELEASE);
}

/* ---- the libbpf reader ---------------------------------------------------- */

static int libbpf_sample(void *ctx, void *data, size_t size)
{
    (void)ctx;
    on_record(data, size);
    return 0;
}

/* ---- loading -------------------------------------------------------------- */

/* Sets a `const volatile` global before load: its offset in .rodata from the
 * object's BTF (what a generated skeleton knows at compile time). */
static void set_rodata(struct bpf_object *obj, const char *name, const void *value, size_t size)
{
    struct bpf_map *rodata = bpf_object__find_map_by_name(obj, ".rodata");
    struct btf *btf = bpf_object__btf(obj);
    if (!rodata || !btf)
        die("the object has no .rodata or no BTF", EINVAL);
    int id = btf__find_by_name_kind(btf, ".rodata", BTF_KIND_DATASEC);
    const struct btf_type *sec = id > 0 ? btf__type_by_id(btf, (uint32_t)id) : NULL;
    size_t total = 0;
    uint8_t *initial = (uint8_t *)bpf_map__initial_value(rodata, &total);
    if (!sec || !initial)
        die("no BTF or initial value for .rodata", EINVAL);
    const struct btf_var_secinfo *vars = btf_var_secinfos(sec);
    for (int i = 0; i < btf_vlen(sec); i++) {
        const struct btf_type *var = btf__type_by_id(btf, vars[i].type);
        if (!var || strcmp(btf__name_by_offset(btf, var->name_off), name) != 0)
            continue;
        if (vars[i].size != size || vars[i].offset + size > total)
            die(name, EINVAL);
        memcpy(initial + vars[i].offset, value, size);
        return;
    }
    fprintf(stderr, "reference: the object has no global '%s'\n", name);
    exit(1);
}

static int map_fd(struct bpf_object *obj, const char *name)
{
    int fd = bpf_object__find_map_fd_by_name(obj, name);
    if (fd < 0) {
        fprintf(stderr, "reference: the object has no map '%s'\n", name);
        exit(1);
    }
    return fd;
}

/* Warnings and errors only (the debug level is the whole load trace). */
static int print_libbpf(enum libbpf_print_level level, const char *format, va_list args)
{
    if (level == LIBBPF_DEBUG)
        return 0;
    return vfprintf(stderr, format, args);
}

static void usage(void)
{
    fprintf(stderr, "usage: reference -o OUTPUT [-b OBJECT] [-r direct|libbpf] [-s RING_BYTES] [-p BOOST] [-f [-u]]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *object_path = "bench/out/connect/pipelined.bpf.o";
    const char *reader = "direct";
    unsigned long ring_bytes = 8ul << 20; /* ringbuf_bytes' default */
    int boost = 4;                        /* settings.priority_boost's default */
    int pushdown = 1;
    int opt;
    while ((opt = getopt(argc, argv, "o:b:r:s:p:fu")) != -1) {
        switch (opt) {
        case 'o': out_path = optarg; break;
        case 'b': object_path = optarg; break;
        case 'r': reader = optarg; break;
        case 's': ring_bytes = strtoul(optarg, NULL, 0); break;
        case 'p': boost = atoi(optarg); break;
        case 'f': failures_only = 1; break;
        case 'u': pushdown = 0; break;
        default: usage();
        }
    }
    int use_libbpf = strcmp(reader, "libbpf") == 0;
    if (!out_path || (!use_libbpf && strcmp(reader, "direct") != 0) ||
        ring_bytes < 4096 || (ring_bytes & (ring_bytes - 1)))
        usage();

    /* As the daemon's stage threads: nice lowered by the boost. */
    if (boost > 0) {
        errno = 0;
        int nice = getpriority(PRIO_PROCESS, 0);
        if (errno == 0 && setpriority(PRIO_PROCESS, 0, nice - boost < -20 ? -20 : nice - boost) != 0)
            fprintf(stderr, "reference: priority boost not applied: %s\n", strerror(errno));
    }

    struct sigaction sa = { .sa_handler = on_signal }; /* no SA_RESTART: the wait returns EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    out_fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out_fd < 0)
        die(out_path, errno);
    out = malloc(OUT_CAP);
    o = out;
    init_node();
    init_layouts();

    libbpf_set_print(print_libbpf);
    LIBBPF_OPTS(bpf_object_open_opts, open_opts, .object_name = "pipelined");
    struct bpf_object *obj = bpf_object__open_file(object_path, &open_opts);
    int err = libbpf_get_error(obj);
    if (err)
        die(object_path, err);

    uint32_t self_tgid = (uint32_t)getpid(), use_ringbuf = 1;
    uint64_t wakeup_bytes = ring_bytes / 16;
    set_rodata(obj, "self_tgid", &self_tgid, sizeof self_tgid);
    set_rodata(obj, "use_ringbuf", &use_ringbuf, sizeof use_ringbuf);
    set_rodata(obj, "ringbuf_wakeup_bytes", &wakeup_bytes, sizeof wakeup_bytes);

    /* Only connect's exit-only tracepoint program is loaded. */
    struct bpf_program *prog, *connect_prog = NULL;
    bpf_object__for_each_program(prog, obj) {
        int wanted = strcmp(bpf_program__name(prog), "tp_ret_connect") == 0;
        if (wanted)
            connect_prog = prog;
        if (bpf_program__set_autoload(prog, wanted) != 0)
            die("set_autoload", errno);
    }
    if (!connect_prog) {
        fprintf(stderr, "reference: the object has no program tp_ret_connect\n");
        return 1;
    }
    struct bpf_map *ringbuf = bpf_object__find_map_by_name(obj, "ringbuf");
    if (!ringbuf)
        die("the object has no map 'ringbuf'", EINVAL);
    if ((err = bpf_map__set_max_entries(ringbuf, (uint32_t)ring_bytes)) != 0)
        die("sizing the ring buffer", err);
    if ((err = bpf_object__load(obj)) != 0)
        die("load", err);

    /* The maps, in the daemon's order (writeMaps): settings, keep, enabled, visibility. */
    uint32_t zero = 0;
    struct pl_settings settings = { .skip_retvals = { -2, -115 }, .skip_retvals_count = 2 };
    if (bpf_map_update_elem(map_fd(obj, "settings"), &zero, &settings, BPF_ANY) != 0)
        die("writing settings", errno);
    /* No clause: every kept event is kept whole (enabled has no clause bits).
     * Failures pushed down: clause 0 is retval in [INT64_MIN, -1], any value. */
    struct pl_keep keep;
    memset(&keep, 0, sizeof keep);
    int push_failures = failures_only && pushdown;
    if (push_failures) {
        keep.clauses[0].min = INT64_MIN;
        keep.clauses[0].max = -1;
        keep.clauses[0].in_count = PL_KEEP_IN_ANY;
        keep.clauses[0].origin = PL_KEEP_ANY;
    }
    if (bpf_map_update_elem(map_fd(obj, "keep"), &zero, &keep, BPF_ANY) != 0)
        die("writing keep", errno);
    int enabled_fd = map_fd(obj, "enabled");
    for (size_t i = 0; i < sizeof catalog / sizeof catalog[0]; i++) {
        uint32_t on = catalog[i] == PL_EV_CONNECT ? PL_EVENT_ON | (push_failures ? 1u : 0) : 0;
        if (bpf_map_update_elem(enabled_fd, &catalog[i], &on, BPF_ANY) != 0)
            die("writing enabled", errno);
    }
    int visibility_fd = map_fd(obj, "visibility");
    for (uint32_t scope = 0; scope < PL_SCOPE_COUNT; scope++) {
        uint32_t hidden = 0;
        if (bpf_map_update_elem(visibility_fd, &scope, &hidden, BPF_ANY) != 0)
            die("writing visibility", errno);
    }

    int ring_fd = bpf_map__fd(ringbuf);
    struct direct_ring direct;
    struct ring_buffer *rb = NULL;
    if (use_libbpf) {
        rb = ring_buffer__new(ring_fd, libbpf_sample, NULL, NULL);
        if ((err = libbpf_get_error(rb)) != 0)
            die("ring_buffer__new", err);
    } else {
        direct_open(&direct, ring_fd, ring_bytes);
    }

    wall_offset_ns = monotonic_to_wall_offset();
    struct bpf_link *link = bpf_program__attach_tracepoint(connect_prog, "syscalls", "sys_exit_connect");
    if ((err = libbpf_get_error(link)) != 0)
        die("attaching syscalls/sys_exit_connect", err);
    fprintf(stderr, "reference: attached tp_ret_connect to syscalls/sys_exit_connect (exit-only capture), "
                    "ring buffer of %lu bytes, wake-up at %lu bytes, reader %s, keeping %s\n",
            ring_bytes, (unsigned long)wakeup_bytes, reader,
            !failures_only ? "everything" : pushdown ? "failures (pushed down)" : "failures (user space only)");

    int64_t last_flush = clock_ns(CLOCK_MONOTONIC);
    while (!stopping) {
        if (use_libbpf) {
            err = ring_buffer__poll(rb, 100);
            if (err < 0 && err != -EINTR)
                die("ring_buffer__poll", err);
        } else {
            struct epoll_event ev;
            if (epoll_wait(direct.epoll_fd, &ev, 1, 100) < 0 && errno != EINTR)
                die("epoll_wait", errno);
            direct_consume(&direct);
        }
        /* At least every flush interval, what is buffered goes out. */
        int64_t now = clock_ns(CLOCK_MONOTONIC);
        if (o > out && now - last_flush >= FLUSH_INTERVAL_NS) {
            flush_output();
            last_flush = now;
        }
    }

    /* Nothing new arrives once detached; what the ring holds still goes out. */
    bpf_link__destroy(link);
    if (use_libbpf)
        ring_buffer__consume(rb);
    else
        direct_consume(&direct);
    flush_output();
    fsync(out_fd);
    close(out_fd);

    unsigned long lost = 0;
    int cpus = libbpf_num_possible_cpus();
    struct pl_ringbuf_cpu *slots = calloc((size_t)(cpus > 0 ? cpus : 1), sizeof *slots);
    if (cpus > 0 && bpf_map_lookup_elem(map_fd(obj, "ringbuf_percpu"), &zero, slots) == 0)
        for (int i = 0; i < cpus; i++)
            lost += slots[i].drops;
    fprintf(stderr, "reference: stopped: records=%lu lost=%lu malformed=%lu filtered=%lu bytes=%lu\n",
            records, lost, malformed, filtered, bytes_written);
    ring_buffer__free(rb);
    bpf_object__close(obj);
    return 0;
}
