#!/usr/bin/env bash
# Kernel CPU per traced connect(), for each capture path of syscall_monitor:
# with `sysctl kernel.bpf_stats_enabled=1` the kernel counts, per program,
# its runs and the time spent in it (bpf_prog_info run_cnt, run_time_ns);
# pipelined serves both on its metrics endpoint
# (pipelined_stage_bpf_runs_total, pipelined_stage_bpf_run_seconds_total,
# labelled by program). Per capture (entry: tp_enter_connect + tp_exit_connect;
# exit: tp_ret_connect), `pipelined run` traces a loadgen storm; the script
# reads the series at the end and prints, per program, ns per run, and in
# total the kernel ns per connect (all programs' time / the exit program's
# runs). Run as root; restores bpf_stats_enabled afterwards. (bpftool, where
# installed, shows the same counters: `bpftool prog show` lists run_time_ns
# and run_cnt; it is not needed here.)
#
#   bench/connect/kernel-cost.sh                         (MODE=udp, 2 x 500000 connects, 5 runs per capture)
#   CAPTURES="entry exit" RUNS=7 EVENTS_PER_PROCESS=1000000 bench/connect/kernel-cost.sh
#   PIPELINE=failures bench/connect/kernel-cost.sh       (a retval success: false filter: with pushdown
#                                                         the exit program submits nothing)
#   PIPELINED=.build/debug/pipelined RUNS=1 EVENTS_PER_PROCESS=20000 bench/connect/kernel-cost.sh
#                                                        (a given binary, no release build)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/bench/out/kernel-cost"
per_process="${EVENTS_PER_PROCESS:-500000}"
processes="${PROCESSES:-2}"
runs="${RUNS:-5}"
mode="${MODE:-udp}"
captures="${CAPTURES:-entry exit}"
pipeline_kind="${PIPELINE:-all}"
mkdir -p "$out"
rm -f "$out"/*.jsonl "$out"/*.log "$out"/*.prom

for tool in curl cc; do
    command -v "$tool" > /dev/null || { echo "kernel-cost.sh: $tool is missing" >&2; exit 1; }
done
if [ -n "${PIPELINED:-}" ]; then
    pipelined="$(cd "$root" && realpath "$PIPELINED")"
else
    echo "== building pipelined (swift build -c release --static-swift-stdlib)"
    (cd "$root" && swift build -c release --static-swift-stdlib --product pipelined > "$out/build.log" 2>&1) || { tail -20 "$out/build.log" >&2; exit 1; }
    pipelined="$(cd "$root" && swift build -c release --static-swift-stdlib --show-bin-path)/pipelined"
fi
cc -O2 -Wall -o "$out/loadgen" "$here/loadgen.c"

stats_before="$(cat /proc/sys/kernel/bpf_stats_enabled)"
trap 'echo "$stats_before" > /proc/sys/kernel/bpf_stats_enabled' EXIT
echo 1 > /proc/sys/kernel/bpf_stats_enabled

pipeline_file() {
    local capture="$1" filters="" input=kernel
    if [ "$pipeline_kind" = failures ]; then
        input=failed
        filters="
filters:
  failed: {type: retval, inputs: [kernel], success: false}"
    fi
    cat > "$out/pipeline-$capture.yaml" <<YAML
name: bench-kernel-cost
settings:
  metrics: {listen: "127.0.0.1:0"}
sources:
  kernel: {type: syscall_monitor, events: [connect], capture: $capture}$filters
sinks:
  log: {type: file, inputs: [$input], path: $out/pipelined.jsonl}
YAML
}

# One run: prints "program runs run_seconds" lines of the kernel stage.
run_once() {
    local capture="$1" log="$out/pipelined-$1.log"
    "$pipelined" run "$out/pipeline-$capture.yaml" > /dev/null 2> "$log" &
    local daemon=$!
    for _ in $(seq 1 600); do grep -q "pipeline started" "$log" && break; sleep 0.1; done
    grep -q "pipeline started" "$log" || { echo "kernel-cost.sh: pipelined did not start:" >&2; tail -20 "$log" >&2; kill "$daemon" 2> /dev/null; exit 1; }
    local port
    port="$(sed -n 's/.*metrics endpoint listening on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$log" | head -1)"
    "$out/loadgen" "$per_process" "$processes" "$mode" > /dev/null
    curl -s "http://127.0.0.1:$port/metrics" > "$out/metrics-$capture.prom"
    kill -INT "$daemon"
    wait "$daemon" || true
    rm -f "$out/pipelined.jsonl"
    awk '
        /^pipelined_stage_bpf_runs_total\{/ { match($0, /program="[^"]*"/); p = substr($0, RSTART + 9, RLENGTH - 10); runs[p] = $NF }
        /^pipelined_stage_bpf_run_seconds_total\{/ { match($0, /program="[^"]*"/); p = substr($0, RSTART + 9, RLENGTH - 10); secs[p] = $NF }
        END { for (p in runs) printf "%s %s %s\n", p, runs[p], secs[p] }
    ' "$out/metrics-$capture.prom"
}

: > "$out/runs.txt"
for capture in $captures; do
    pipeline_file "$capture"
    for run in $(seq 1 "$runs"); do
        echo "== $capture: run $run/$runs" >&2
        run_once "$capture" | sed "s/^/$capture $run /" >> "$out/runs.txt"
    done
    grep -o 'tracing [0-9]* event(s).*' "$out/pipelined-$capture.log" | head -1 | sed "s/^/   $capture: /" >&2
done

# runs.txt: capture run program runs seconds
awk -v n="$runs" -v k="$pipeline_kind" '
function sort(a, m,   i, j, t) { for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t } }
function spread(a, m,   med) { sort(a, m); med = (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2; return sprintf("%.1f (%.1f to %.1f)", med, a[1], a[m]) }
{
    key = $1 SUBSEP $3
    if (!(key in seen)) { seen[key] = 1; programs[$1] = programs[$1] " " $3 }
    ns[$1, $2] += $5 * 1e9
    per[$1, $3, $2] = ($4 > 0 ? $5 * 1e9 / $4 : 0)
    # The exit program runs once per traced connect.
    if ($3 ~ /_(exit|ret)_connect$/) calls[$1, $2] = $4
}
END {
    printf "kernel CPU per connect (bpf_stats run_time_ns / run_cnt), %d runs per capture, pipeline %s; median (min to max):\n", n, k
    for (c in programs) {
        m = split(programs[c], names, " ")
        for (i = 1; i <= m; i++) {
            for (r = 1; r <= n; r++) v[r] = per[c, names[i], r]
            printf "  %-6s %-18s %s ns per run\n", c, names[i], spread(v, n)
        }
        for (r = 1; r <= n; r++) t[r] = (calls[c, r] > 0 ? ns[c, r] / calls[c, r] : 0)
        printf "  %-6s %-18s %s ns per connect, all its programs\n", c, "total", spread(t, n)
    }
}' "$out/runs.txt" | tee "$out/results.txt"
