#!/usr/bin/env bash
# Instructions the daemon executes per delivered event, counted by
# valgrind's callgrind (no PMU needed, and unlike times independent of what
# else the machine runs): `pipelined run` (a release build; events
# [connect], ring buffer, a file sink) under callgrind while loadgen makes
# N1 and then N2 UDP connects, one daemon each; the difference of the two
# totals over the difference of the records written cancels start-up
# (loading the BPF object, building tables) out. Run as root.
#
#   bench/connect/instructions.sh                       (100000 and 400000)
#   N1=50000 N2=250000 bench/connect/instructions.sh
#   PIPELINED=/path/to/pipelined bench/connect/instructions.sh   (another build)
#
# Under callgrind the daemon runs some 50 times slower, so the ring is
# large (256 MiB) and the script waits for every record before stopping it;
# a run that loses events says so and fails. Needs valgrind (Debian
# package valgrind); the binary's DWARF is stripped first (valgrind 3.19
# cannot read Swift's).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/bench/out/instructions"
n1="${N1:-100000}"
n2="${N2:-400000}"
mkdir -p "$out"
command -v valgrind > /dev/null || { echo "instructions.sh: valgrind is missing (apt-get install valgrind)" >&2; exit 1; }

if [ -n "${PIPELINED:-}" ]; then
    pipelined="$(realpath "$PIPELINED")"
else
    (cd "$root" && swift build -c release --static-swift-stdlib --product pipelined > "$out/build.log" 2>&1) || { tail -20 "$out/build.log" >&2; exit 1; }
    pipelined="$(cd "$root" && swift build -c release --static-swift-stdlib --show-bin-path)/pipelined"
fi
strip --strip-debug -o "$out/pipelined" "$pipelined"
cc -O2 -Wall -o "$out/loadgen" "$here/loadgen.c"
cat > "$out/pipeline.yaml" <<YAML
name: bench-instructions
settings:
  metrics: {listen: false}
sources:
  kernel:
    type: syscall_monitor
    events: [connect]
    transport: ringbuf
    ringbuf_bytes: 256MiB
sinks:
  log:
    type: file
    inputs: [kernel]
    path: $out/events.jsonl
YAML

# count N: prints "INSTRUCTIONS RECORDS" of one daemon that saw N connects.
count() {
    local n="$1" log="$out/callgrind-$1.log"
    rm -f "$out/events.jsonl"
    valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.$n" "$out/pipelined" run "$out/pipeline.yaml" > /dev/null 2> "$log" &
    local daemon=$!
    for _ in $(seq 1 600); do grep -q "pipeline started" "$log" && break; sleep 0.2; done
    "$out/loadgen" $(( n / 2 )) 2 udp > /dev/null
    local seen=0
    for _ in $(seq 1 600); do
        seen=$(grep -c '"comm":"loadgen"' "$out/events.jsonl" 2> /dev/null || true)
        [ "${seen:-0}" -ge "$n" ] && break
        sleep 1
    done
    kill -INT "$daemon"
    wait "$daemon" || true
    if [ "${seen:-0}" -lt "$n" ] || grep -q '"event":"lost"' "$out/events.jsonl"; then
        echo "instructions.sh: the daemon wrote $seen of $n events (or lost some): see $log" >&2
        exit 1
    fi
    echo "$(sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$log") $(grep -c . "$out/events.jsonl")"
}
read -r ir1 records1 < <(count "$n1")
read -r ir2 records2 < <(count "$n2")
echo "$(( (ir2 - ir1) / (records2 - records1) )) instructions per delivered event ($ir1 for $records1 records, $ir2 for $records2; $pipelined)"
