#!/usr/bin/env bash
# What the metrics endpoint costs: the connect storm of bench/connect
# (loadgen, P processes as fast as they can) traced by `pipelined run` with
# settings.metrics.listen false and with the endpoint on and scraped every
# second (as Prometheus would), side by side in each run, with an untraced
# run of the storm beside them. Run as root.
#
# Reports, per variant, medians with min and max over the runs: the storm's
# traced/untraced rate ratio (its overhead) and pipelined's CPU seconds per
# million delivered events; then the on/off difference of each.
#
#   bench/metrics/run.sh
#   RUNS=7 EVENTS_PER_PROCESS=300000 PROCESSES=2 MODE=udp bench/metrics/run.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/bench/out/metrics"
per_process="${EVENTS_PER_PROCESS:-500000}"
processes="${PROCESSES:-2}"
runs="${RUNS:-5}"
mode="${MODE:-mixed}"
mkdir -p "$out"
rm -f "$out"/*.jsonl "$out"/*.log "$out"/*.time "$out"/runs.txt

for tool in /usr/bin/time cc; do
    command -v "$tool" > /dev/null || { echo "run.sh: $tool is missing" >&2; exit 1; }
done

echo "== building pipelined (swift build -c release --static-swift-stdlib) and loadgen (cc -O2)"
(cd "$root" && swift build -c release --static-swift-stdlib --product pipelined > "$out/build.log" 2>&1) || { tail -20 "$out/build.log" >&2; exit 1; }
pipelined="$(cd "$root" && swift build -c release --static-swift-stdlib --show-bin-path)/pipelined"
cc -O2 -Wall -o "$out/loadgen" "$root/bench/connect/loadgen.c"

pipeline() {  # $1: the variant (off, on), $2: its settings.metrics.listen
    cat > "$out/pipeline-$1.yaml" <<YAML
name: bench-metrics
settings:
  metrics: {listen: "$2"}
sources:
  kernel: {type: syscall_monitor, events: [connect]}
sinks:
  log: {type: file, inputs: [kernel], path: "$out/pipelined.jsonl"}
YAML
}
pipeline off false
pipeline on 127.0.0.1:0

load() {
    local result
    result="$("$out/loadgen" "$per_process" "$processes" "$mode" | grep rate=)"
    echo "   loadgen: $result" >&2
    sed -n 's/.*rate=\([0-9]*\).*/\1/p' <<< "$result"
}

wait_for() {  # file, pattern
    for _ in $(seq 1 300); do grep -q "$2" "$1" 2> /dev/null && return 0; sleep 0.1; done
    echo "run.sh: timed out waiting for '$2' in $1" >&2
    return 1
}

cpu_seconds() { awk -F': ' '/User time|System time/ { sum += $2 } END { printf "%.3f", sum }' "$1"; }

# Scrapes http://127.0.0.1:PORT/metrics once a second until killed.
scraper() {
    while sleep 1; do
        exec 3<> "/dev/tcp/127.0.0.1/$1" || continue
        printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3
        cat <&3 > "$out/last-scrape.txt"
        exec 3>&-
    done
}

run_pipelined() {  # off|on -> "rate delivered cpu"
    /usr/bin/time -v -o "$out/pipelined.time" "$pipelined" run "$out/pipeline-$1.yaml" > /dev/null 2> "$out/pipelined.log" &
    local time_pid=$! scraper_pid=""
    wait_for "$out/pipelined.log" "pipeline started"
    if [ "$1" = on ]; then
        local port
        port="$(sed -n 's/.*listening on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$out/pipelined.log" | head -1)"
        scraper "$port" &
        scraper_pid=$!
    fi
    local rate
    rate="$(load)"
    [ -n "$scraper_pid" ] && { kill "$scraper_pid"; wait "$scraper_pid" 2> /dev/null || true; }
    kill -INT "$(pgrep -P "$time_pid" | head -1)"
    wait "$time_pid"
    local delivered
    delivered="$(grep -c '"comm":"loadgen"' "$out/pipelined.jsonl" || true)"
    echo "$rate $delivered $(cpu_seconds "$out/pipelined.time")"
    rm -f "$out/pipelined.jsonl" "$out/pipelined.time"
}

for run in $(seq 1 "$runs"); do
    echo "== run $run/$runs: untraced, metrics off, metrics on (order alternates)"
    untraced="$(load)"
    if [ $((run % 2)) = 1 ]; then
        off="$(run_pipelined off)"; on="$(run_pipelined on)"
    else
        on="$(run_pipelined on)"; off="$(run_pipelined off)"
    fi
    echo "$untraced $off $on" >> "$out/runs.txt"
done

# runs.txt: untraced | rate delivered cpu (off) | rate delivered cpu (on)
awk -v n="$runs" -v g="$((per_process * processes))" -v m="$mode" '
function sort(a, k,   i, j, t) { for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t } }
function median(a, k) { sort(a, k); return (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2 }
function line(name, a, k, fmt) { sort(a, k); printf "%-28s median " fmt "  min " fmt "  max " fmt "\n", name, median(a, k), a[1], a[k] }
{
    r0[NR] = $2 / $1; c0[NR] = $3 > 0 ? $4 / $3 * 1e6 : 0; d0[NR] = $3
    r1[NR] = $5 / $1; c1[NR] = $6 > 0 ? $7 / $6 * 1e6 : 0; d1[NR] = $6
    dr[NR] = (r1[NR] - r0[NR]) / r0[NR] * 100; dc[NR] = (c1[NR] - c0[NR]) / c0[NR] * 100
    printf "run %d: untraced %d/s | off %d/s ratio %.3f cpu %.3f s/M delivered %d | on %d/s ratio %.3f cpu %.3f s/M delivered %d\n", NR, $1, $2, r0[NR], c0[NR], $3, $5, r1[NR], c1[NR], $6
}
END {
    printf "\n%d runs of %d connects (mode %s):\n", n, g, m
    line("rate ratio, metrics off", r0, n, "%.3f"); line("rate ratio, metrics on", r1, n, "%.3f")
    line("CPU s/M events, metrics off", c0, n, "%.3f"); line("CPU s/M events, metrics on", c1, n, "%.3f")
    line("on vs off: rate ratio (%)", dr, n, "%+.1f"); line("on vs off: CPU per event (%)", dc, n, "%+.1f")
}' "$out/runs.txt" | tee "$out/results.txt"
