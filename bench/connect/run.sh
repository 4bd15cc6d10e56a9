#!/usr/bin/env bash
# The kernel source benchmark: P processes (default 2) make connect() calls
# as fast as they can (bench/connect/loadgen.c: UDP connects to 127.0.0.1
# and refused TCP connects, alternating), measured side by side in one run:
#
#   untraced     loadgen alone
#   pipelined    traced by `pipelined run` (release build, default settings,
#                events [connect], file sink to a file)
#   bpftrace     traced by bpftrace on the same tracepoints, printing a line
#                per event into a file
#
# Reports per tracer: delivered/generated events (plus what the tracer says
# it lost), traced/untraced rate ratio, the tracer's CPU seconds per million
# delivered events, and its peak RSS. Run as root.
#
#   bench/connect/run.sh
#   EVENTS_PER_PROCESS=200000 PROCESSES=2 bench/connect/run.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/bench/out/connect"
per_process="${EVENTS_PER_PROCESS:-500000}"
processes="${PROCESSES:-2}"
generated=$((per_process * processes))
mkdir -p "$out"
rm -f "$out"/*.jsonl "$out"/*.txt "$out"/*.log "$out"/*.time

for tool in /usr/bin/time bpftrace cc; do
    command -v "$tool" > /dev/null || { echo "run.sh: $tool is missing" >&2; exit 1; }
done

echo "== building pipelined (swift build -c release) and loadgen (cc -O2)"
(cd "$root" && swift build -c release --product pipelined > "$out/build.log" 2>&1) || { tail -20 "$out/build.log" >&2; exit 1; }
pipelined="$(cd "$root" && swift build -c release --show-bin-path)/pipelined"
cc -O2 -Wall -o "$out/loadgen" "$here/loadgen.c"

cat > "$out/pipeline.yaml" <<YAML
name: bench-connect
sources:
  kernel:
    type: syscall_monitor
    events: [connect]
sinks:
  log:
    type: file
    inputs: [kernel]
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
    result="$("$out/loadgen" "$per_process" "$processes")"
    echo "   loadgen: $result" >&2
    sed -n 's/.*rate=\([0-9]*\).*/\1/p' <<< "$result"
}

# user+sys seconds and peak RSS (KiB) from a `time -v` report.
cpu_seconds() { awk -F': ' '/User time|System time/ { sum += $2 } END { printf "%.2f", sum }' "$1"; }
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

echo "== untraced"
untraced="$(load)"

echo "== traced by pipelined"
/usr/bin/time -v -o "$out/pipelined.time" "$pipelined" run "$out/pipeline.yaml" 2> "$out/pipelined.log" &
time_pid=$!
wait_for "$out/pipelined.log" "pipeline started"
traced_pipelined="$(load)"
kill -INT "$(tracer_pid "$time_pid")"
wait "$time_pid"
delivered_pipelined="$(grep -c '"comm":"loadgen"' "$out/pipelined.jsonl" || true)"
lost_pipelined="$({ grep '"event":"lost"' "$out/pipelined.jsonl" || true; } | sed -n 's/.*"count":\([0-9]*\).*/\1/p' | awk '{ s += $1 } END { print s + 0 }')"

echo "== traced by bpftrace"
/usr/bin/time -v -o "$out/bpftrace.time" bpftrace -o "$out/bpftrace.txt" -e '
tracepoint:syscalls:sys_enter_connect { @fd[tid] = args->fd; }
tracepoint:syscalls:sys_exit_connect /@fd[tid]/ {
    printf("%llu %d %d %s %d %d\n", nsecs, pid, tid, comm, @fd[tid], args->ret);
    delete(@fd[tid]);
}' 2> "$out/bpftrace.log" &
time_pid=$!
wait_for "$out/bpftrace.txt" "Attaching"
traced_bpftrace="$(load)"
kill -INT "$(tracer_pid "$time_pid")"
wait "$time_pid" || true
delivered_bpftrace="$(grep -c ' loadgen ' "$out/bpftrace.txt" || true)"
lost_bpftrace="$({ grep -ho 'Lost [0-9]* events' "$out/bpftrace.txt" "$out/bpftrace.log" || true; } | awk '{ s += $2 } END { print s + 0 }')"

report() {
    local name="$1" rate="$2" delivered="$3" lost="$4" timefile="$5"
    local cpu rss
    cpu="$(cpu_seconds "$timefile")"
    rss="$(peak_rss_kib "$timefile")"
    awk -v n="$name" -v r="$rate" -v u="$untraced" -v d="$delivered" -v g="$generated" -v l="$lost" -v c="$cpu" -v m="$rss" 'BEGIN {
        printf "%-10s rate %9d/s  ratio %.3f  delivered %d/%d (%.4f)  lost(reported) %d  cpu %.2fs = %.3f s/M events  peak RSS %.1f MiB\n",
            n, r, r / u, d, g, d / g, l, c, (d > 0 ? c / d * 1e6 : 0), m / 1024 }'
}

{
    echo "generated per run: $generated connects ($processes processes x $per_process)"
    printf "%-10s rate %9d/s\n" untraced "$untraced"
    report pipelined "$traced_pipelined" "$delivered_pipelined" "$lost_pipelined" "$out/pipelined.time"
    report bpftrace "$traced_bpftrace" "$delivered_bpftrace" "$lost_bpftrace" "$out/bpftrace.time"
    awk -v p="$traced_pipelined" -v b="$traced_bpftrace" 'BEGIN { printf "pipelined ratio / bpftrace ratio: %.2f\n", p / b }'
} | tee "$out/results.txt"
