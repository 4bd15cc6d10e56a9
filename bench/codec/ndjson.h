/*
 * The wire decoder and NDJSON formatter of the C baselines, shared by
 * bench/codec/baseline.c (the codec chain) and bench/connect/reference.c
 * (the C + libbpf consumer of the storm benchmark).
 *
 * decode(): a bounds-checked decoder of the bpf/wire.h layout into a struct.
 * format(): a hand-written formatter for docs/event-record.md lines of
 * connect events (key order, RFC 3339 time, errno names, sockaddr objects,
 * JSON escaping of comm and paths), byte-identical to pipelined's.
 *
 * A header of static functions, for programs of one translation unit.
 */
#ifndef BENCH_NDJSON_H
#define BENCH_NDJSON_H

#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

/* An upper bound of one connect line: the fixed keys and numbers (about
 * 400 bytes), the node (at most 255), comm escaped (16 bytes, 6 each at
 * worst) and an AF_UNIX path escaped (108 bytes, 6 each at worst). */
#define FORMAT_MAX 2048

/* ---- the records ------------------------------------------------------ */

enum { INT_T = 1, STR_T = 10, STR_ARR_T = 11, SOCKADDR_T = 12 };

struct arg {
    uint8_t tag;
    int32_t i;            /* INT_T */
    uint32_t u;           /* flag tags */
    const uint8_t *str;   /* STR_T, points into the record */
    int32_t str_len;      /* -1: null */
    uint16_t family, port;
    uint32_t v4;          /* host order */
    uint8_t v6[16];
    char path[110];       /* AF_UNIX, "@" for abstract */
};

struct event {
    uint64_t ts;
    uint32_t pid_ns, mnt_ns, host_ppid, host_pid, ppid, pid, uid, event_id, argnum;
    int64_t retval;
    char comm[17];
    int nargs;
    struct arg args[6];
};

/* Declared wire tags per event id, 8 bits each, count in the top byte. */
static uint64_t layouts[512];

static void init_layouts(void) {
#define L(id, n, t) layouts[id] = ((uint64_t)(n) << 56) | (t)
#define T(i, tag) ((uint64_t)(tag) << (8 * (i)))
    L(2, 2, T(0, STR_T) | T(1, 13));
    L(3, 1, T(0, INT_T));
    L(41, 3, T(0, 15) | T(1, 16) | T(2, INT_T));
    L(42, 2, T(0, INT_T) | T(1, SOCKADDR_T));
    L(43, 2, T(0, INT_T) | T(1, SOCKADDR_T));
    L(49, 2, T(0, INT_T) | T(1, SOCKADDR_T));
    L(50, 2, T(0, INT_T) | T(1, INT_T));
    L(59, 2, T(0, STR_T) | T(1, STR_ARR_T));
    L(84, 1, T(0, STR_T));
    L(87, 1, T(0, STR_T));
    L(92, 3, T(0, STR_T) | T(1, INT_T) | T(2, INT_T));
    L(101, 2, T(0, 23) | T(1, INT_T));
    L(105, 1, T(0, INT_T));
    L(106, 1, T(0, INT_T));
    L(165, 5, T(0, STR_T) | T(1, STR_T) | T(2, STR_T) | T(3, 24) | T(4, STR_T));
    L(166, 2, T(0, STR_T) | T(1, 25));
    L(257, 3, T(0, INT_T) | T(1, STR_T) | T(2, 13));
    L(260, 5, T(0, INT_T) | T(1, STR_T) | T(2, INT_T) | T(3, INT_T) | T(4, INT_T));
    L(263, 3, T(0, INT_T) | T(1, STR_T) | T(2, 19));
    L(322, 4, T(0, INT_T) | T(1, STR_T) | T(2, STR_ARR_T) | T(3, 14));
#undef L
#undef T
}

static inline uint16_t ld16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* 0 on success, -1 for a malformed record; never reads past p + size. */
static int decode(const uint8_t *p, size_t size, struct event *e) {
    if (size < 68) return -1;
    e->ts = ld64(p);
    e->pid_ns = ld32(p + 8);
    e->mnt_ns = ld32(p + 12);
    e->host_ppid = ld32(p + 16);
    e->host_pid = ld32(p + 20);
    e->ppid = ld32(p + 24);
    e->pid = ld32(p + 28);
    e->uid = ld32(p + 32);
    e->event_id = ld32(p + 36);
    e->argnum = ld32(p + 40);
    e->retval = (int64_t)ld64(p + 44);
    memcpy(e->comm, p + 52, 16);
    e->comm[16] = 0;
    if (e->event_id >= 512 || layouts[e->event_id] == 0) return -1;
    uint64_t layout = layouts[e->event_id];
    if (e->argnum > 6 || e->argnum != (layout >> 56)) return -1;
    size_t off = 68;
    e->nargs = 0;
    for (uint32_t i = 0; i < e->argnum; i++) {
        struct arg *a = &e->args[i];
        if (off >= size) return -1;
        a->tag = p[off++];
        if (a->tag != (uint8_t)(layout >> (8 * i))) return -1;
        switch (a->tag) {
        case INT_T:
            if (size - off < 4) return -1;
            a->i = (int32_t)ld32(p + off);
            off += 4;
            break;
        case STR_T: {
            if (size - off < 4) return -1;
            int32_t n = (int32_t)ld32(p + off);
            off += 4;
            if (n <= 0) { a->str_len = -1; break; }
            if ((size_t)n > size - off) return -1;
            const uint8_t *nul = memchr(p + off, 0, n);
            a->str = p + off;
            a->str_len = nul ? (int32_t)(nul - (p + off)) : n;
            off += n;
            break;
        }
        case SOCKADDR_T:
            if (size - off < 2) return -1;
            a->family = ld16(p + off);
            if (a->family == 2) {
                if (size - off < 16) return -1;
                a->port = ntohs(ld16(p + off + 2));
                a->v4 = ntohl(ld32(p + off + 4));
                off += 16;
            } else if (a->family == 10) {
                if (size - off < 28) return -1;
                a->port = ntohs(ld16(p + off + 2));
                memcpy(a->v6, p + off + 8, 16);
                off += 28;
            } else if (a->family == 1) {
                if (size - off < 110) return -1;
                const uint8_t *path = p + off + 2;
                if (path[0] == 0) {
                    size_t n = strnlen((const char *)path + 1, 107);
                    if (n == 0) a->path[0] = 0;
                    else { a->path[0] = '@'; memcpy(a->path + 1, path + 1, n); a->path[n + 1] = 0; }
                } else {
                    size_t n = strnlen((const char *)path, 108);
                    memcpy(a->path, path, n);
                    a->path[n] = 0;
                }
                off += 110;
            } else {
                off += 2;
            }
            break;
        case 13: case 14: case 15: case 16: case 19: case 23: case 24: case 25:
            if (size - off < 4) return -1;
            a->u = ld32(p + off);
            off += 4;
            break;
        default: /* string arrays are not in this benchmark's records */
            return -1;
        }
        e->nargs++;
    }
    return 0;
}

/* ---- formatting -------------------------------------------------------- */

static const char *errno_names[134] = {
    "", "EPERM", "ENOENT", "ESRCH", "EINTR", "EIO", "ENXIO", "E2BIG", "ENOEXEC", "EBADF", "ECHILD",
    "EAGAIN", "ENOMEM", "EACCES", "EFAULT", "ENOTBLK", "EBUSY", "EEXIST", "EXDEV", "ENODEV", "ENOTDIR",
    "EISDIR", "EINVAL", "ENFILE", "EMFILE", "ENOTTY", "ETXTBSY", "EFBIG", "ENOSPC", "ESPIPE", "EROFS",
    "EMLINK", "EPIPE", "EDOM", "ERANGE", "EDEADLK", "ENAMETOOLONG", "ENOLCK", "ENOSYS", "ENOTEMPTY", "ELOOP",
    "", "ENOMSG", "EIDRM", "ECHRNG", "EL2NSYNC", "EL3HLT", "EL3RST", "ELNRNG", "EUNATCH", "ENOCSI",
    "EL2HLT", "EBADE", "EBADR", "EXFULL", "ENOANO", "EBADRQC", "EBADSLT", "", "EBFONT", "ENOSTR",
    "ENODATA", "ETIME", "ENOSR", "ENONET", "ENOPKG", "EREMOTE", "ENOLINK", "EADV", "ESRMNT", "ECOMM",
    "EPROTO", "EMULTIHOP", "EDOTDOT", "EBADMSG", "EOVERFLOW", "ENOTUNIQ", "EBADFD", "EREMCHG", "ELIBACC", "ELIBBAD",
    "ELIBSCN", "ELIBMAX", "ELIBEXEC", "EILSEQ", "ERESTART", "ESTRPIPE", "EUSERS", "ENOTSOCK", "EDESTADDRREQ", "EMSGSIZE",
    "EPROTOTYPE", "ENOPROTOOPT", "EPROTONOSUPPORT", "ESOCKTNOSUPPORT", "EOPNOTSUPP", "EPFNOSUPPORT", "EAFNOSUPPORT", "EADDRINUSE", "EADDRNOTAVAIL", "ENETDOWN",
    "ENETUNREACH", "ENETRESET", "ECONNABORTED", "ECONNRESET", "ENOBUFS", "EISCONN", "ENOTCONN", "ESHUTDOWN", "ETOOMANYREFS", "ETIMEDOUT",
    "ECONNREFUSED", "EHOSTDOWN", "EHOSTUNREACH", "EALREADY", "EINPROGRESS", "ESTALE", "EUCLEAN", "ENOTNAM", "ENAVAIL", "EISNAM",
    "EREMOTEIO", "EDQUOT", "ENOMEDIUM", "EMEDIUMTYPE", "ECANCELED", "ENOKEY", "EKEYEXPIRED", "EKEYREVOKED", "EKEYREJECTED", "EOWNERDEAD",
    "ENOTRECOVERABLE", "ERFKILL", "EHWPOISON",
};

/* The kernel-internal 512 to 531 (linux/errno.h), which a syscall's exit can
 * show before the syscall layer rewrites them (ERESTARTSYS for a signal);
 * 520 has no name. */
static const char *kernel_errno_names[20] = {
    "ERESTARTSYS", "ERESTARTNOINTR", "ERESTARTNOHAND", "ENOIOCTLCMD", "ERESTART_RESTARTBLOCK",
    "EPROBE_DEFER", "EOPENSTALE", "ENOPARAM", "", "EBADHANDLE", "ENOTSYNC", "EBADCOOKIE", "ENOTSUPP",
    "ETOOSMALL", "ESERVERFAULT", "EBADTYPE", "EJUKEBOX", "EIOCBQUEUED", "ERECALLCONFLICT", "ENOGRACE",
};

static const char *family_names[] = {
    "AF_UNSPEC", "AF_UNIX", "AF_INET", "AF_AX25", "AF_IPX", "AF_APPLETALK", "AF_NETROM", "AF_BRIDGE",
    "AF_ATMPVC", "AF_X25", "AF_INET6", "AF_ROSE", "AF_DECnet", "AF_NETBEUI", "AF_SECURITY", "AF_KEY",
    "AF_NETLINK", "AF_PACKET",
};

static inline char *put(char *o, const char *s) { size_t n = strlen(s); memcpy(o, s, n); return o + n; }
#define PUTLIT(o, s) (memcpy((o), (s), sizeof(s) - 1), (o) + sizeof(s) - 1)

static inline char *put_u64(char *o, uint64_t v) {
    char tmp[20];
    int n = 0;
    do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) *o++ = tmp[--n];
    return o;
}

static inline char *put_i64(char *o, int64_t v) {
    if (v < 0) { *o++ = '-'; return put_u64(o, (uint64_t)0 - (uint64_t)v); }
    return put_u64(o, (uint64_t)v);
}

static inline char *put2(char *o, int v) { o[0] = (char)('0' + v / 10); o[1] = (char)('0' + v % 10); return o + 2; }

/* RFC 3339 UTC with nanoseconds, days-to-civil after Howard Hinnant. */
static char *put_time(char *o, int64_t ns) {
    int64_t s = ns / 1000000000, nanos = ns % 1000000000;
    if (nanos < 0) { nanos += 1000000000; s -= 1; }
    int64_t days = s / 86400, sod = s % 86400;
    if (sod < 0) { sod += 86400; days -= 1; }
    int64_t z = days + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int d = (int)(doy - (153 * mp + 2) / 5 + 1);
    int m = (int)(mp < 10 ? mp + 3 : mp - 9);
    int y = (int)(yoe + era * 400 + (m <= 2));
    o = put2(o, y / 100); o = put2(o, y % 100); *o++ = '-';
    o = put2(o, m); *o++ = '-'; o = put2(o, d); *o++ = 'T';
    o = put2(o, (int)(sod / 3600)); *o++ = ':'; o = put2(o, (int)(sod % 3600 / 60)); *o++ = ':';
    o = put2(o, (int)(sod % 60)); *o++ = '.';
    for (int64_t div = 100000000; div; div /= 10) *o++ = (char)('0' + nanos / div % 10);
    *o++ = 'Z';
    return o;
}

/* JSON string body; bytes that are not UTF-8 become U+FFFD (one per bad byte,
 * simpler than maximal-subpart but equal for this benchmark's ASCII data). */
static char *put_escaped(char *o, const uint8_t *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') { *o++ = (char)c; continue; }
        if (c < 0x80) {
            *o++ = '\\';
            switch (c) {
            case '"': *o++ = '"'; break;
            case '\\': *o++ = '\\'; break;
            case '\n': *o++ = 'n'; break;
            case '\r': *o++ = 'r'; break;
            case '\t': *o++ = 't'; break;
            case '\b': *o++ = 'b'; break;
            case '\f': *o++ = 'f'; break;
            default: o = PUTLIT(o, "u00"); *o++ = hex[c >> 4]; *o++ = hex[c & 15];
            }
            continue;
        }
        int len = (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEF) ? 3 : (c >= 0xF0 && c <= 0xF4) ? 4 : 0;
        int ok = len > 0 && i + len <= n;
        for (int k = 1; ok && k < len; k++) ok = (s[i + k] & 0xC0) == 0x80;
        if (ok) { memcpy(o, s + i, len); o += len; i += len - 1; }
        else o = PUTLIT(o, "\xEF\xBF\xBD");
    }
    return o;
}

/* The record's node: the host name, as the Swift side's default (a host
 * name needs no JSON escaping). Set by init_node(). */
static char node[256];
static size_t node_len;

/* The host name, or "localhost" without one (as PipelineCore's NodeTable). */
static void init_node(void) {
    if (gethostname(node, sizeof(node) - 1) != 0 || node[0] == 0)
        strcpy(node, "localhost");
    node_len = strlen(node);
}

/* Formats one line of `e` into `o` (room for the longest connect line, at
 * most FORMAT_MAX bytes); returns the end. Only connect (id 42): callers
 * check e->event_id first. */
static char *format(char *o, const struct event *e, int64_t wall_offset_ns) {
    o = PUTLIT(o, "{\"time\":\"");
    o = put_time(o, (int64_t)e->ts + wall_offset_ns);
    o = PUTLIT(o, "\",\"node\":\"");
    memcpy(o, node, node_len);
    o += node_len;
    o = PUTLIT(o, "\",\"ktime_ns\":");
    o = put_u64(o, e->ts);
    /* Only connect: the codec chain has no other records, the storm traces no other event. */
    o = PUTLIT(o, ",\"event\":\"connect\",\"event_id\":42,\"scope\":\"network\",\"retval\":");
    o = put_i64(o, e->retval);
    o = PUTLIT(o, ",\"result\":\"");
    if (e->retval >= 0) o = PUTLIT(o, "ok");
    else if (e->retval >= -133 && errno_names[-e->retval][0]) o = put(o, errno_names[-e->retval]);
    else if (e->retval <= -512 && e->retval >= -531 && kernel_errno_names[-e->retval - 512][0])
        o = put(o, kernel_errno_names[-e->retval - 512]);
    else { *o++ = 'E'; o = put_u64(o, (uint64_t)0 - (uint64_t)e->retval); }
    o = PUTLIT(o, "\",\"pid\":"); o = put_u64(o, e->pid);
    o = PUTLIT(o, ",\"ppid\":"); o = put_u64(o, e->ppid);
    o = PUTLIT(o, ",\"host_pid\":"); o = put_u64(o, e->host_pid);
    o = PUTLIT(o, ",\"host_ppid\":"); o = put_u64(o, e->host_ppid);
    o = PUTLIT(o, ",\"uid\":"); o = put_u64(o, e->uid);
    o = PUTLIT(o, ",\"pid_ns\":"); o = put_u64(o, e->pid_ns);
    o = PUTLIT(o, ",\"mnt_ns\":"); o = put_u64(o, e->mnt_ns);
    if (e->pid_ns && e->mnt_ns) o = PUTLIT(o, ",\"origin\":\"container\",\"comm\":\"");
    else o = PUTLIT(o, ",\"origin\":\"host\",\"comm\":\"");
    o = put_escaped(o, (const uint8_t *)e->comm, strnlen(e->comm, 16));
    o = PUTLIT(o, "\",\"args\":{\"fd\":");
    o = put_i64(o, e->args[0].i);
    o = PUTLIT(o, ",\"addr\":{\"family\":");
    const struct arg *a = &e->args[1];
    if (a->family == 2) {
        o = PUTLIT(o, "\"AF_INET\",\"ip\":\"");
        o = put_u64(o, a->v4 >> 24); *o++ = '.';
        o = put_u64(o, (a->v4 >> 16) & 255); *o++ = '.';
        o = put_u64(o, (a->v4 >> 8) & 255); *o++ = '.';
        o = put_u64(o, a->v4 & 255);
        o = PUTLIT(o, "\",\"port\":");
        o = put_u64(o, a->port);
    } else if (a->family == 10) {
        char text[INET6_ADDRSTRLEN];
        inet_ntop(AF_INET6, a->v6, text, sizeof text);
        o = PUTLIT(o, "\"AF_INET6\",\"ip\":\"");
        o = put(o, text);
        o = PUTLIT(o, "\",\"port\":");
        o = put_u64(o, a->port);
    } else if (a->family == 1) {
        o = PUTLIT(o, "\"AF_UNIX\",\"path\":\"");
        o = put_escaped(o, (const uint8_t *)a->path, strlen(a->path));
        *o++ = '"';
    } else if (a->family < sizeof family_names / sizeof family_names[0]) {
        *o++ = '"'; o = put(o, family_names[a->family]); *o++ = '"';
    } else {
        o = put_u64(o, a->family);
    }
    o = PUTLIT(o, "}}}\n");
    return o;
}

#endif /* BENCH_NDJSON_H */
