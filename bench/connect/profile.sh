#!/usr/bin/env bash
# Where the consumer's CPU goes: `pipelined run` (the release build, the same
# pipeline as run.sh: events [connect], a file sink) sampled by `perf record`
# while loadgen makes a UDP connect storm. Prints the hottest symbols, by
# self time and grouped by what they do (kernel copy, decode, encode, write).
#
#   bench/connect/profile.sh                       (2 x 1000000 connects)
#   EVENTS_PER_PROCESS=500000 bench/connect/profile.sh
#
# Software clock sampling (-e cpu-clock): VMs often expose no PMU cycles.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/bench/out/profile"
per_process="${EVENTS_PER_PROCESS:-1000000}"
mkdir -p "$out"
command -v perf > /dev/null || { echo "profile.sh: perf is missing (apt-get install linux-perf)" >&2; exit 1; }

(cd "$root" && swift build -c release --static-swift-stdlib --product pipelined > "$out/build.log" 2>&1) || { tail -20 "$out/build.log" >&2; exit 1; }
pipelined="$(cd "$root" && swift build -c release --static-swift-stdlib --show-bin-path)/pipelined"
cc -O2 -Wall -o "$out/loadgen" "$here/loadgen.c"
cat > "$out/pipeline.yaml" <<YAML
name: bench-profile
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

rm -f "$out/pipelined.jsonl"
"$pipelined" run "$out/pipeline.yaml" > /dev/null 2> "$out/pipelined.log" &
daemon=$!
for _ in $(seq 1 300); do grep -q "pipeline started" "$out/pipelined.log" && break; sleep 0.1; done
perf record -e cpu-clock -F 2999 -g -p "$daemon" -o "$out/perf.data" > /dev/null 2>&1 &
recorder=$!
sleep 0.5
"$out/loadgen" "$per_process" 2 udp
sleep 0.5
kill -INT "$recorder"; wait "$recorder" || true
kill -INT "$daemon"; wait "$daemon" || true
echo "delivered: $(grep -c '"comm":"loadgen"' "$out/pipelined.jsonl")"

report() { perf report -i "$out/perf.data" --no-children --sort "$1" --stdio 2> /dev/null | grep -v '^#' | grep -v '^$' | grep '%' ; }
echo "== by thread"
report comm | head -8
echo "== hottest symbols (self)"
report dso,sym | head -30 | tee "$out/symbols.txt"
