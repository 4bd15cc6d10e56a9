#!/usr/bin/env bash
# The kernel source benchmark: P processes (default 2) make connect() calls
# as fast as they can (bench/connect/loadgen.c: UDP connects to 127.0.0.1
# and refused TCP connects, alternating), measured side by side in one run:
#
#   untraced     loadgen alone
#   pipelined    traced by `pipelined run` (the README's release build:
#                `swift build -c release --static-swift-stdlib`; default settings,
#                events [connect], file sink to a file)
#   reference    traced by the C + libbpf reference (reference.c, cc -O2): the
#                daemon's kernel path for events [connect] (the same BPF object,
#                rodata and maps, exit-only capture, ring buffer) and its
#                per-event work in plain C (decode, NDJSON line byte-identical
#                to the file sink's, write(2) in 192 KiB chunks) into a file
#   bpftrace     traced by bpftrace on the same tracepoints, printing a line
#                per event into a file
#
# Reports per tracer: delivered/generated events (plus what the tracer says
# it lost), traced/untraced rate ratio, the tracer's CPU seconds per million
# delivered events, and its peak RSS; pipelined's rate and CPU against the
# reference's and bpftrace's. Run as root.
#
#   bench/connect/run.sh
#   EVENTS_PER_PROCESS=200000 PROCESSES=2 bench/connect/run.sh
#   TRANSPORT=ringbuf bench/connect/run.sh     (default settings otherwise)
#   TRANSPORT=ringbuf RINGBUF_BYTES=4MiB bench/connect/run.sh
#   BATCH_EVENTS=4096 bench/connect/run.sh      (settings.batch_events)
#   RUNS=9 bench/connect/run.sh                 (medians, min and max over 9 runs; default 7)
#   MODE=udp bench/connect/run.sh               (only UDP connects: the storm;
#                                                MODE=tcp only refused TCP; default mixed)
#   CAPTURE=entry bench/connect/run.sh          (syscall_monitor's capture: entry|exit;
#                                                default auto: exit-only from Linux 5.15)
#   PIPELINE=failures MODE=udp bench/connect/run.sh
#                                               (a retval filter success: false before the
#                                                sink: on a storm of successful connects
#                                                nothing is delivered, and pushdown keeps the
#                                                kernel from submitting anything; CPU per
#                                                million is then per generated event)
#   PIPELINE=failures PUSHDOWN=false MODE=udp bench/connect/run.sh
#                                               (the same with settings.pushdown: false)
#   PIPELINED=.build/debug/pipelined RUNS=1 EVENTS_PER_PROCESS=20000 bench/connect/run.sh
#                                               (a given binary, not built here: a debug
#                                                build to try the script, or a release build
#                                                made beforehand)
#   TRACERS="pipelined reference" bench/connect/run.sh
#                                               (which tracers run, in this order per run
#                                                after untraced: pipelined always, reference
#                                                and bpftrace when named; default all three)
#   REFERENCE_READER=libbpf bench/connect/run.sh
#                                               (the reference's ring reader: direct, the
#                                                daemon's design (one mapping, edge-triggered
#                                                wake-ups, consumer position stored every 64
#                                                records; default), or libbpf's ring_buffer
#                                                as it comes; see reference.c)
#   REFERENCE_CFLAGS=-DOUT_FLUSH=1048576 bench/connect/run.sh
#                                               (the reference built with other flags: here
#                                                1 MiB writes instead of 192 KiB)
#
# The reference mirrors the daemon's default kernel path only: with
# TRANSPORT=perf or CAPTURE=entry it does not run (the summary says so);
# RINGBUF_BYTES and PIPELINE=failures/PUSHDOWN it follows. bench/connect/
# check-reference.sh checks that its lines are pipelined's.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/bench/out/connect"
per_process="${EVENTS_PER_PROCESS:-500000}"
processes="${PROCESSES:-2}"
runs="${RUNS:-7}"
mode="${MODE:-mixed}"
generated=$((per_process * processes))
pipeline_kind="${PIPELINE:-all}"
case "$pipeline_kind" in all|failures) ;; *) echo "run.sh: PIPELINE is all or failures, not $pipeline_kind" >&2; exit 2 ;; esac
mkdir -p "$out"
rm -f "$out"/*.jsonl "$out"/*.txt "$out"/*.log "$out"/*.time  # (*-N.time: run N's /usr/bin/time -v)

tracers="${TRACERS:-pipelined reference bpftrace}"
with_reference=0
with_bpftrace=0
for tracer in $tracers; do
    case "$tracer" in
        pipelined) ;;
        reference) with_reference=1 ;;
        bpftrace) with_bpftrace=1 ;;
        *) echo "run.sh: TRACERS names pipelined, reference and bpftrace, not $tracer" >&2; exit 2 ;;
    esac
done
case " $tracers " in *" pipelined "*) ;; *) echo "run.sh: TRACERS must name pipelined (the other figures are read against it)" >&2; exit 2 ;; esac
reference_reader="${REFERENCE_READER:-direct}"
case "$reference_reader" in direct|libbpf) ;; *) echo "run.sh: REFERENCE_READER is direct or libbpf, not $reference_reader" >&2; exit 2 ;; esac
# The reference's options for this pipeline; it has only the daemon's
# default kernel path (ring buffer, exit-only capture).
reference_flags=(-r "$reference_reader")
reference_skipped=""
if [ "$with_reference" = 1 ]; then
    if [ "${TRANSPORT:-auto}" = perf ] || [ "${CAPTURE:-auto}" = entry ]; then
        reference_skipped="TRANSPORT=${TRANSPORT:-auto} CAPTURE=${CAPTURE:-auto}: the reference has only the ring buffer and exit-only capture"
        with_reference=0
    fi
    if [ -n "${RINGBUF_BYTES:-}" ]; then
        # The daemon's size syntax, as far as a power of two needs it.
        ring_bytes="$(awk -v s="$RINGBUF_BYTES" 'BEGIN {
            if (match(s, /^[0-9]+/)) { n = substr(s, 1, RLENGTH); u = substr(s, RLENGTH + 1) } else exit
            m = (u == "" || u == "B") ? 1 : (u == "KiB" || u == "K") ? 1024 : (u == "MiB" || u == "M") ? 1048576 : (u == "GiB" || u == "G") ? 1073741824 : 0
            if (m) printf "%d", n * m }')"
        [ -n "$ring_bytes" ] || { echo "run.sh: cannot read RINGBUF_BYTES=$RINGBUF_BYTES for the reference" >&2; exit 2; }
        reference_flags+=(-s "$ring_bytes")
    fi
    if [ "$pipeline_kind" = failures ]; then
        reference_flags+=(-f)
        if [ "${PUSHDOWN:-true}" = false ]; then reference_flags+=(-u); fi
    fi
fi

needed=(/usr/bin/time cc)
[ "$with_bpftrace" = 1 ] && needed+=(bpftrace)
for tool in "${needed[@]}"; do
    command -v "$tool" > /dev/null || { echo "run.sh: $tool is missing" >&2; exit 1; }
done

if [ -n "${PIPELINED:-}" ]; then
    pipelined="$(cd "$root" && realpath "$PIPELINED")"
    echo "== using $pipelined (PIPELINED, not built here); building loadgen (cc -O2)"
else
    echo "== building pipelined (swift build -c release --static-swift-stdlib) and loadgen (cc -O2)"
    (cd "$root" && swift build -c release --static-swift-stdlib --product pipelined > "$out/build.log" 2>&1) || { tail -20 "$out/build.log" >&2; exit 1; }
    pipelined="$(cd "$root" && swift build -c release --static-swift-stdlib --show-bin-path)/pipelined"
fi
cc -O2 -Wall -o "$out/loadgen" "$here/loadgen.c"
if [ "$with_reference" = 1 ]; then
    echo "== building the C reference (its BPF object with the plugin's clang flags; cc -O2 -lbpf -lelf -lz)"
    "$here/build-reference.sh" "$out"
fi

settings=""
[ -n "${BATCH_EVENTS:-}" ] && settings="$settings
  batch_events: $BATCH_EVENTS"
[ -n "${PUSHDOWN:-}" ] && settings="$settings
  pushdown: $PUSHDOWN"
sink_input=kernel
filters=""
if [ "$pipeline_kind" = failures ]; then
    sink_input=failed
    filters="
filters:
  failed:
    type: retval
    inputs: [kernel]
    success: false"
fi
cat > "$out/pipeline.yaml" <<YAML
name: bench-connect${settings:+
settings:$settings}
sources:
  kernel:
    type: syscall_monitor
    events: [connect]${CAPTURE:+
    capture: $CAPTURE}${TRANSPORT:+
    transport: $TRANSPORT}${RINGBUF_BYTES:+
    ringbuf_bytes: $RINGBUF_BYTES}$filters
sinks:
  log:
    type: file
    inputs: [$sink_input]
    path: $out/pipelined.jsonl
YAML

# Waits until FILE contains PATTERN (a tracer says it is attached).
wait_for() {
    local file="$1" pattern="$2"
    for _ in $(seq 1 600); do
        grep -q "$pattern" "$file" 2> /dev/null && return 0
        sleep 0.1
    done
    echo "run.sh: timed out waiting for '$pattern' in $file" >&2
    return 1
}

# `rate=` of a loadgen run; fails the benchmark if a connect went wrong.
load() {
    local result
    result="$("$out/loadgen" "$per_process" "$processes" "$mode")"
    echo "   loadgen: $result" >&2
    sed -n 's/.*rate=\([0-9]*\).*/\1/p' <<< "$result"
}

# user+sys seconds, user and system seconds apart, and peak RSS (KiB) from a `time -v` report.
cpu_seconds() { awk -F': ' '/User time|System time/ { sum += $2 } END { printf "%.2f", sum }' "$1"; }
user_seconds() { awk -F': ' '/User time/ { printf "%.2f", $2 }' "$1"; }
system_seconds() { awk -F': ' '/System time/ { printf "%.2f", $2 }' "$1"; }
# Syscalls and context switches of a process while it runs (perf stat -p;
# counts, not times, so they hold on a noisy machine). Prints "0 0" without perf.
count_start() {
    if command -v perf > /dev/null; then
        rm -f "$out/perf-stat.txt"
        perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$1" -o "$out/perf-stat.txt" > /dev/null 2>&1 &
        echo $!
    fi
}
count_stop() {
    if [ -n "${1:-}" ]; then
        kill -INT "$1" 2> /dev/null || true
        # perf is not this shell's child (it was started in a command
        # substitution): wait for its report rather than for the process.
        for _ in $(seq 1 50); do
            grep -q context-switches "$out/perf-stat.txt" 2> /dev/null && break
            sleep 0.1
        done
        awk -F, '/raw_syscalls/ { s = $1 } /context-switches/ { c = $1 } END { printf "%d %d", s, c }' "$out/perf-stat.txt"
    else
        echo "0 0"
    fi
}
peak_rss_kib() { awk -F': ' '/Maximum resident set size/ { print $2 }' "$1"; }

# The child of `time` (the tracer itself).
tracer_pid() {
    local pid
    for _ in $(seq 1 50); do
        pid="$(pgrep -P "$1" | head -1)"
        [ -n "$pid" ] && { echo "$pid"; return 0; }
        sleep 0.1
    done
    return 1
}

run_pipelined() {
    /usr/bin/time -v -o "$out/pipelined.time" "$pipelined" run "$out/pipeline.yaml" > /dev/null 2> "$out/pipelined.log" &
    local time_pid=$!
    wait_for "$out/pipelined.log" "pipeline started"
    [ "$run" = 1 ] && grep -o 'tracing [0-9]* event(s).*' "$out/pipelined.log" | head -1 | sed 's/^/   pipelined: /' >&2
    local tracer counter rate counts
    tracer="$(tracer_pid "$time_pid")"
    counter="$(count_start "$tracer")"
    rate="$(load)"
    counts="$(count_stop "$counter")"
    kill -INT "$tracer"
    wait "$time_pid"
    local delivered lost
    delivered="$(grep -c '"comm":"loadgen"' "$out/pipelined.jsonl" || true)"
    lost="$({ grep '"event":"lost"' "$out/pipelined.jsonl" || true; } | sed -n 's/.*"count":\([0-9]*\).*/\1/p' | awk '{ s += $1 } END { print s + 0 }')"
    echo "$rate $delivered $lost $(cpu_seconds "$out/pipelined.time") $(peak_rss_kib "$out/pipelined.time") $(user_seconds "$out/pipelined.time") $(system_seconds "$out/pipelined.time") $counts"
    mv "$out/pipelined.time" "$out/pipelined-$run.time"
    rm -f "$out/pipelined.jsonl"
}

run_reference() {
    /usr/bin/time -v -o "$out/reference.time" "$out/reference" -o "$out/reference.jsonl" -b "$out/pipelined.bpf.o" "${reference_flags[@]}" > /dev/null 2> "$out/reference.log" &
    local time_pid=$!
    wait_for "$out/reference.log" "attached"
    [ "$run" = 1 ] && sed -n 's/^reference: attached /   reference: attached /p' "$out/reference.log" >&2
    local tracer counter rate counts
    tracer="$(tracer_pid "$time_pid")"
    counter="$(count_start "$tracer")"
    rate="$(load)"
    counts="$(count_stop "$counter")"
    kill -INT "$tracer"
    wait "$time_pid"
    local delivered lost
    delivered="$(grep -c '"comm":"loadgen"' "$out/reference.jsonl" || true)"
    lost="$(sed -n 's/^reference: stopped: .*lost=\([0-9]*\).*/\1/p' "$out/reference.log")"
    echo "$rate $delivered ${lost:-0} $(cpu_seconds "$out/reference.time") $(peak_rss_kib "$out/reference.time") $(user_seconds "$out/reference.time") $(system_seconds "$out/reference.time") $counts"
    mv "$out/reference.time" "$out/reference-$run.time"
    rm -f "$out/reference.jsonl"
}

run_bpftrace() {
    /usr/bin/time -v -o "$out/bpftrace.time" bpftrace -o "$out/bpftrace.txt" -e '
tracepoint:syscalls:sys_enter_connect { @fd[tid] = args->fd; }
tracepoint:syscalls:sys_exit_connect /@fd[tid]/ {
    printf("%llu %d %d %s %d %d\n", nsecs, pid, tid, comm, @fd[tid], args->ret);
    delete(@fd[tid]);
}' > /dev/null 2> "$out/bpftrace.log" &
    local time_pid=$!
    wait_for "$out/bpftrace.txt" "Attaching"
    local rate
    rate="$(load)"
    kill -INT "$(tracer_pid "$time_pid")"
    wait "$time_pid" || true
    local delivered lost
    delivered="$(grep -c ' loadgen ' "$out/bpftrace.txt" || true)"
    lost="$({ grep -ho 'Lost [0-9]* events' "$out/bpftrace.txt" "$out/bpftrace.log" || true; } | awk '{ s += $2 } END { print s + 0 }')"
    echo "$rate $delivered $lost $(cpu_seconds "$out/bpftrace.time") $(peak_rss_kib "$out/bpftrace.time")"
    mv "$out/bpftrace.time" "$out/bpftrace-$run.time"
    rm -f "$out/bpftrace.txt"
}

# Each run measures them side by side, so that each ratio compares rates
# taken moments apart on a machine whose load may change.
: > "$out/runs.txt"
for run in $(seq 1 "$runs"); do
    echo "== run $run/$runs: untraced"
    untraced="$(load)"
    echo "== run $run/$runs: traced by pipelined"
    pipelined_result="$(run_pipelined)"
    reference_result="0 0 0 0 0 0 0 0 0"
    if [ "$with_reference" = 1 ]; then
        echo "== run $run/$runs: traced by the C reference"
        reference_result="$(run_reference)"
    fi
    bpftrace_result="0 0 0 0 0"
    if [ "$with_bpftrace" = 1 ]; then
        echo "== run $run/$runs: traced by bpftrace"
        bpftrace_result="$(run_bpftrace)"
    fi
    echo "$untraced $pipelined_result $bpftrace_result $reference_result" >> "$out/runs.txt"
done

# runs.txt: untraced | rate delivered lost cpu rss user sys syscalls ctxsw (pipelined) | rate delivered lost cpu rss (bpftrace)
#           | rate delivered lost cpu rss user sys syscalls ctxsw (reference); a tracer that did not run has zeros
[ -n "$reference_skipped" ] && echo "== the C reference did not run: $reference_skipped"
awk -v g="$generated" -v n="$runs" -v p="$processes" -v e="$per_process" -v m="$mode" -v k="$pipeline_kind" -v c="${CAPTURE:-auto}" -v pd="${PUSHDOWN:-true}" \
    -v wr="$with_reference" -v wb="$with_bpftrace" -v reader="$reference_reader" '
function sort(a, k,   i, j, t) {
    for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
}
function median(a, k) { sort(a, k); return (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2 }
# "median (min to max)" of a[1..k].
function spread(a, k, f,   med) { med = median(a, k); return sprintf(f " (" f " to " f ")", med, a[1], a[k]) }
{
    u[NR] = $1
    # Per delivered event, or per generated one where the pipeline keeps few (failures).
    d = (k == "failures" ? g : $3)
    pr[NR] = $2 / $1; pdl[NR] = $3; pl[NR] = $4; pc[NR] = (d > 0 ? $5 / d * 1e6 : 0); pm[NR] = $6 / 1024
    pu[NR] = (d > 0 ? $7 / d * 1e6 : 0); ps[NR] = (d > 0 ? $8 / d * 1e6 : 0)
    sc[NR] = (d > 0 ? $9 / d * 1e6 : 0); cs[NR] = (d > 0 ? $10 / d * 1e6 : 0)
    br[NR] = $11 / $1; bd[NR] = $12; bl[NR] = $13; bc[NR] = ($12 > 0 ? $14 / $12 * 1e6 : 0); bm[NR] = $15 / 1024
    q[NR] = ($11 > 0 ? $2 / $11 : 0)
    dr = (k == "failures" ? g : $17)
    rr[NR] = $16 / $1; rdl[NR] = $17; rl[NR] = $18; rc[NR] = (dr > 0 ? $19 / dr * 1e6 : 0); rm[NR] = $20 / 1024
    ru[NR] = (dr > 0 ? $21 / dr * 1e6 : 0); rs[NR] = (dr > 0 ? $22 / dr * 1e6 : 0)
    rsc[NR] = (dr > 0 ? $23 / dr * 1e6 : 0); rcs[NR] = (dr > 0 ? $24 / dr * 1e6 : 0)
    qr[NR] = ($16 > 0 ? $2 / $16 : 0); qc[NR] = (rc[NR] > 0 ? pc[NR] / rc[NR] : 0)
    printf "run %d: untraced %d/s | pipelined %d/s ratio %.3f delivered %d lost %d cpu %.2fs (user %.2f sys %.2f) syscalls %d ctxsw %d RSS %.1f MiB", NR, $1, $2, pr[NR], $3, $4, $5, $7, $8, $9, $10, pm[NR]
    if (wb) printf " | bpftrace %d/s ratio %.3f delivered %d lost %d cpu %.2fs RSS %.1f MiB", $11, br[NR], $12, $13, $14, bm[NR]
    if (wr) printf " | reference %d/s ratio %.3f delivered %d lost %d cpu %.2fs (user %.2f sys %.2f) syscalls %d ctxsw %d RSS %.1f MiB", $16, rr[NR], $17, $18, $19, $21, $22, $23, $24, rm[NR]
    printf "\n"
}
END {
    printf "\n%d runs of %d connects (%d processes x %d, mode %s; pipeline %s, capture %s, pushdown %s); median (min to max):\n", n, g, p, e, m, k, c, pd
    printf "pipelined  traced/untraced %s  delivered/generated %.4f (+%d reported lost)\n", spread(pr, n, "%.3f"), median(pdl, n) / g, median(pl, n)
    printf "           CPU s per million %s events %s: user %s, system %s\n", (k == "failures" ? "generated" : "delivered"), spread(pc, n, "%.3f"), spread(pu, n, "%.3f"), spread(ps, n, "%.3f")
    printf "           per million events: syscalls %s, context switches %s; peak RSS %s MiB\n", spread(sc, n, "%.0f"), spread(cs, n, "%.0f"), spread(pm, n, "%.1f")
    if (wb) {
        printf "bpftrace   traced/untraced %s  delivered/generated %.4f (+%d reported lost)  CPU s per million events %s  peak RSS %.1f MiB\n", spread(br, n, "%.3f"), median(bd, n) / g, median(bl, n), spread(bc, n, "%.3f"), median(bm, n)
        printf "pipelined ratio / bpftrace ratio: %s\n", spread(q, n, "%.2f")
    }
    if (wr) {
        printf "reference  traced/untraced %s  delivered/generated %.4f (+%d reported lost)  (C + libbpf, reader %s)\n", spread(rr, n, "%.3f"), median(rdl, n) / g, median(rl, n), reader
        printf "           CPU s per million %s events %s: user %s, system %s\n", (k == "failures" ? "generated" : "delivered"), spread(rc, n, "%.3f"), spread(ru, n, "%.3f"), spread(rs, n, "%.3f")
        printf "           per million events: syscalls %s, context switches %s; peak RSS %s MiB\n", spread(rsc, n, "%.0f"), spread(rcs, n, "%.0f"), spread(rm, n, "%.1f")
        printf "pipelined / C reference rate ratio: %s\n", spread(qr, n, "%.3f")
        printf "pipelined / C reference CPU per million events: %s\n", spread(qc, n, "%.2f")
    }
}' "$out/runs.txt" | tee "$out/results.txt"
