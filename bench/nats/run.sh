#!/usr/bin/env bash
# The nats benchmark, three parts in one run, on one nats-server -js on a
# loopback port with a fresh store for every measurement:
#
#   1. rate    the nats sink (`pipelined run`: replay of an NDJSON file into a
#              `nats` sink, release build) against publisher.c (the same lines,
#              the same C client, async publish, the same max pending, a
#              Nats-Msg-Id each), alternating, RUNS times each: events/s from
#              start to the last ack, CPU seconds per million events
#   2. latency a node (replay of a FIFO that fleetbench fills at RATE events/s,
#              each record stamped with its write time) → nats → an aggregator
#              (`nats` source → unix_socket) → fleetbench recv: p50/p99
#   2b. read   the aggregator alone: a stream filled by publisher.c with EVENTS
#              events, read by `pipelined run` (nats source → file sink) RUNS
#              times: events/s to the last line written, the aggregator's CPU
#              and the server's CPU while it reads
#   3. live    a syscall_monitor node (events [connect]) → nats while
#              fleetbench makes LIVE_RATE connect() calls a second: what the
#              sink lost (must be 0) and what reached the stream
#
#   bench/nats/run.sh
#   EVENTS=500000 RUNS=3 RATE=50000 LIVE_RATE=200000 LIVE_SECONDS=10 bench/nats/run.sh
#   PARTS="latency" RATE=20000 bench/nats/run.sh     (only some parts: rate latency read live)
#   PIPELINED=/path/to/pipelined bench/nats/run.sh   (a given binary, not built here)
#   BUFFER=disk PARTS=rate bench/nats/run.sh         (the sink with state_directory and buffer: disk)
#   BUFFER=disk BUFFER_SYNC=0s PARTS=rate bench/nats/run.sh   (… and its buffer_sync, default 1s)
#   LIVE_SINK="buffer: disk, buffer_bytes: 1GiB, state_directory: /var/tmp/live" PARTS=live bench/nats/run.sh
#                                                    (more options for the live node's sink)
#
# Needs nats-server, libnats-dev, cc and /usr/bin/time (Debian package
# `time`); part 3 needs root (eBPF).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/bench/out/nats"
events="${EVENTS:-500000}"
runs="${RUNS:-3}"
rate="${RATE:-50000}"
latency_seconds="${LATENCY_SECONDS:-10}"
live_rate="${LIVE_RATE:-200000}"
live_seconds="${LIVE_SECONDS:-10}"
parts="${PARTS:-rate latency read live}"
buffer="${BUFFER:-memory}"
part() { case " $parts " in *" $1 "*) return 0 ;; esac; return 1; }
max_pending=4096
mkdir -p "$out"

for tool in /usr/bin/time nats-server cc; do
    command -v "$tool" > /dev/null || { echo "run.sh: $tool is missing" >&2; exit 1; }
done

if [ -n "${PIPELINED:-}" ]; then
    echo "== pipelined: $PIPELINED (PIPELINED, not built here); building publisher and fleetbench (cc -O2)"
    pipelined="$PIPELINED"
else
    echo "== building pipelined (swift build -c release --static-swift-stdlib), publisher and fleetbench (cc -O2)"
    (cd "$root" && swift build -c release --static-swift-stdlib --product pipelined > "$out/build.log" 2>&1) || { tail -20 "$out/build.log" >&2; exit 1; }
    pipelined="$(cd "$root" && swift build -c release --static-swift-stdlib --show-bin-path)/pipelined"
fi
cc -O2 -Wall -o "$out/publisher" "$here/publisher.c" -lnats
cc -O2 -Wall -o "$out/fleetbench" "$here/fleetbench.c"

port=$((20000 + RANDOM % 20000))
url="nats://127.0.0.1:$port"
server_pid=""
start_server() {
    rm -rf "$out/store"
    nats-server -js -a 127.0.0.1 -p "$port" -sd "$out/store" > "$out/nats-server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 100); do
        (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null && return 0
        sleep 0.1
    done
    echo "run.sh: nats-server did not start (see $out/nats-server.log)" >&2
    exit 1
}
stop_server() {
    [ -n "$server_pid" ] && kill "$server_pid" 2> /dev/null && wait "$server_pid" 2> /dev/null || true
    server_pid=""
}
trap stop_server EXIT

"$out/fleetbench" lines "$events" "$out/events.jsonl"
cat > "$out/node.yaml" <<YAML
name: bench-node
settings:
  node: bench
sources:
  recorded: {type: replay, path: $out/events.jsonl}
sinks:
  fleet:
    type: nats
    inputs: [recorded]
    url: $url
    stream: BENCH
    subject: pipelined.{node}.{scope}.{event}
    max_pending: $max_pending
    buffer: $buffer
YAML
[ "$buffer" = memory ] || echo "    state_directory: $out/state" >> "$out/node.yaml"
[ -z "${BUFFER_SYNC:-}" ] || echo "    buffer_sync: $BUFFER_SYNC" >> "$out/node.yaml"

# cpu_of FILE: user + system seconds from /usr/bin/time -v's report.
cpu_of() {
    awk -F': ' '/User time/ { u = $2 } /System time/ { s = $2 } END { printf "%.2f", u + s }' "$1"
}
wall_of() {
    awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; printf "%.3f", s }' "$1"
}

if part rate; then
echo "== 1. rate: $events events per run, $runs runs each, max_pending $max_pending"
printf "%-10s %4s %12s %10s %18s\n" program run "events/s" "CPU s" "CPU s/M events"
sink_rates=() c_rates=() sink_cpus=() c_cpus=()
for run in $(seq "$runs"); do
    start_server
    /usr/bin/time -v "$pipelined" run "$out/node.yaml" > "$out/sink.out" 2> "$out/sink-$run.err" || { tail -20 "$out/sink-$run.err" >&2; exit 1; }
    wall=$(wall_of "$out/sink-$run.err")
    cpu=$(cpu_of "$out/sink-$run.err")
    sink_rate=$(awk -v e="$events" -v w="$wall" 'BEGIN { printf "%d", e / w }')
    sink_rates+=("$sink_rate")
    sink_cpus+=("$cpu")
    printf "%-10s %4s %12s %10s %18.2f\n" sink "$run" "$sink_rate" "$cpu" "$(awk -v c="$cpu" -v e="$events" 'BEGIN { print c * 1e6 / e }')"
    stop_server

    start_server
    "$out/publisher" "$url" BENCH pipelined.bench.network.connect "$out/events.jsonl" "$max_pending" > "$out/c-$run.out"
    c_rate=$(sed -n 's/.* rate=\([0-9]*\).*/\1/p' "$out/c-$run.out")
    cpu=$(sed -n 's/.*cpu_seconds=\([0-9.]*\).*/\1/p' "$out/c-$run.out")
    c_rates+=("$c_rate")
    c_cpus+=("$cpu")
    printf "%-10s %4s %12s %10s %18.2f\n" publisher "$run" "$c_rate" "$cpu" "$(awk -v c="$cpu" -v e="$events" 'BEGIN { print c * 1e6 / e }')"
    stop_server
done
median() { printf "%s\n" "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
sink_median=$(median "${sink_rates[@]}")
c_median=$(median "${c_rates[@]}")
echo "median events/s: sink $sink_median, publisher $c_median, ratio $(awk -v s="$sink_median" -v c="$c_median" 'BEGIN { printf "%.2f", s / c }')"
echo "median CPU s per million events: sink $(awk -v c="$(median "${sink_cpus[@]}")" -v e="$events" 'BEGIN { printf "%.2f", c * 1e6 / e }'), publisher $(awk -v c="$(median "${c_cpus[@]}")" -v e="$events" 'BEGIN { printf "%.2f", c * 1e6 / e }')"

fi

if part latency; then
echo "== 2. latency: node → nats → aggregator at $rate events/s for ${latency_seconds}s"
start_server
rm -f "$out/feed.fifo" "$out/fleet.sock"
mkfifo "$out/feed.fifo"
cat > "$out/latency-node.yaml" <<YAML
name: latency-node
settings:
  node: bench
sources:
  feed: {type: replay, path: $out/feed.fifo}
sinks:
  fleet: {type: nats, inputs: [feed], url: $url, stream: LATENCY}
YAML
cat > "$out/aggregator.yaml" <<YAML
name: latency-aggregator
settings:
  metrics: {listen: false}    # the node beside it has the default port
sources:
  fleet: {type: nats, url: $url, stream: LATENCY, durable: bench}
sinks:
  live: {type: unix_socket, inputs: [fleet], path: $out/fleet.sock}
YAML
"$pipelined" run "$out/latency-node.yaml" 2> "$out/latency-node.err" &
node_pid=$!
"$pipelined" run "$out/aggregator.yaml" 2> "$out/aggregator.err" &
aggregator_pid=$!
total=$(awk -v r="$rate" -v s="$latency_seconds" 'BEGIN { printf "%d", r * s }')
"$out/fleetbench" recv "$out/fleet.sock" "$total" > "$out/latency.out" &
recv_pid=$!
for _ in $(seq 100); do grep -q ready "$out/latency.out" 2> /dev/null && break; sleep 0.1; done
"$out/fleetbench" gen "$out/feed.fifo" "$rate" "$latency_seconds"
wait "$recv_pid" || true
cat "$out/latency.out" | grep -v ready
wait "$node_pid"
kill -TERM "$aggregator_pid"
wait "$aggregator_pid" || true
stop_server

fi

if part read; then
echo "== 2b. read: the aggregator alone (nats source → file sink) reading $events events, $runs runs"
printf "%-4s %12s %16s %16s\n" run "events/s" "aggregator CPU s" "server CPU s"
read_rates=()
ticks="$(getconf CLK_TCK)"
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
for run in $(seq "$runs"); do
    start_server
    "$out/publisher" "$url" BENCH pipelined.bench.network.connect "$out/events.jsonl" "$max_pending" > "$out/read-fill.out"
    rm -f "$out/read.jsonl"
    cat > "$out/read.yaml" <<YAML
name: read-aggregator
sources:
  fleet: {type: nats, url: $url, stream: BENCH, durable: bench}
sinks:
  out: {type: file, inputs: [fleet], path: $out/read.jsonl}
YAML
    server_before=$(cpu_ticks "$server_pid")
    started=$(date +%s.%N)
    "$pipelined" run "$out/read.yaml" 2> "$out/read.err" &
    reader_pid=$!
    while [ "$( { [ -f "$out/read.jsonl" ] && wc -l < "$out/read.jsonl"; } || echo 0)" -lt "$events" ]; do
        kill -0 "$reader_pid" 2> /dev/null || { tail -20 "$out/read.err" >&2; exit 1; }
        sleep 0.02
    done
    ended=$(date +%s.%N)
    reader_ticks=$(cpu_ticks "$reader_pid")
    server_ticks=$(( $(cpu_ticks "$server_pid") - server_before ))
    kill -TERM "$reader_pid"; wait "$reader_pid" || true
    rate=$(awk -v e="$events" -v a="$started" -v b="$ended" 'BEGIN { printf "%d", e / (b - a) }')
    read_rates+=("$rate")
    printf "%-4s %12s %16.2f %16.2f\n" "$run" "$rate" "$(awk -v t="$reader_ticks" -v h="$ticks" 'BEGIN { print t / h }')" "$(awk -v t="$server_ticks" -v h="$ticks" 'BEGIN { print t / h }')"
    stop_server
done
echo "median events/s: $(printf "%s\n" "${read_rates[@]}" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')"
fi

part live || exit 0
echo "== 3. live: syscall_monitor → nats under $live_rate connect()/s for ${live_seconds}s"
if [ "$(id -u)" != 0 ]; then
    echo "(skipped: needs root for eBPF)"
    exit 0
fi
start_server
cat > "$out/live-node.yaml" <<YAML
name: live-node
sources:
  kernel: {type: syscall_monitor, events: [connect]}
sinks:
  fleet: {type: nats, inputs: [kernel], url: $url, stream: LIVE, close_timeout: 60s${LIVE_SINK:+, $LIVE_SINK}}
YAML
"$pipelined" run "$out/live-node.yaml" 2> "$out/live-node.err" &
live_pid=$!
for _ in $(seq 300); do grep -q "pipeline started" "$out/live-node.err" && break; sleep 0.1; done
"$out/fleetbench" connects "$live_rate" "$live_seconds"
sleep 2
kill -TERM "$live_pid"
wait "$live_pid" || true
# in/out/lost of the kernel source and the sink (lost at the sink: dropped
# for want of buffer_bytes while the broker fell behind).
grep -E "stage totals" "$out/live-node.err" | sed 's/^.* info pipelined: //'
stop_server
