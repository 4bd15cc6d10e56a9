#!/usr/bin/env bash
# Checks that the C reference (reference.c) writes the lines `pipelined run`
# writes: both trace the same connect calls at once (loadgen's mixed load,
# then families.c's every address family, escaped AF_UNIX paths and an
# escaped comm), and their lines for those calls must be byte-identical
# once `time` and `ktime_ns` are masked (each program reads the clock
# itself); the two `time`s must also agree with their `ktime_ns` to within
# a millisecond. Run as root; takes a few seconds.
#
#   PIPELINED=/path/to/pipelined bench/connect/check-reference.sh
#   (default: .build/release/pipelined; not built here)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/bench/out/connect/check"
pipelined="$(cd "$root" && realpath "${PIPELINED:-.build/release/pipelined}")"
[ -x "$pipelined" ] || { echo "check-reference.sh: no pipelined at $pipelined (set PIPELINED)" >&2; exit 1; }
mkdir -p "$out"
rm -f "$out"/*.jsonl "$out"/*.log

"$here/build-reference.sh" "$out"
cc -O2 -Wall -o "$out/loadgen" "$here/loadgen.c"
cc -O2 -Wall -o "$out/families" "$here/families.c"

cat > "$out/pipeline.yaml" <<YAML
name: check-reference
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

wait_for() {
    for _ in $(seq 1 300); do
        grep -q "$2" "$1" 2> /dev/null && return 0
        sleep 0.1
    done
    echo "check-reference.sh: timed out waiting for '$2' in $1" >&2
    return 1
}

"$pipelined" run "$out/pipeline.yaml" > /dev/null 2> "$out/pipelined.log" &
pipelined_pid=$!
"$out/reference" -o "$out/reference.jsonl" -b "$out/pipelined.bpf.o" 2> "$out/reference.log" &
reference_pid=$!
trap 'kill -INT $pipelined_pid $reference_pid 2> /dev/null || true' EXIT
wait_for "$out/pipelined.log" "pipeline started"
wait_for "$out/reference.log" "attached"
(cd "$out" && ./loadgen 1000 2 mixed > /dev/null && ./families)
sleep 0.5
kill -INT "$pipelined_pid" "$reference_pid"
wait "$pipelined_pid"
wait "$reference_pid"
trap - EXIT
tail -1 "$out/reference.log"

# The calls' lines (comm loadgen, families, or the escaped one families
# takes), time and ktime_ns masked, sorted: the two loadgen processes run on
# two CPUs, and each program's ring orders their records as it reserved
# them. A line whose time is not RFC 3339 with nine digits keeps it, and
# differs.
calls() {
    grep -E '"comm":"(loadgen|families|f\\")' "$1" |
        sed -E 's/^\{"time":"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{9}Z","node":"([^"]*)","ktime_ns":[0-9]+,/{"time":"T","node":"\1","ktime_ns":K,/' |
        LC_ALL=C sort
}
calls "$out/pipelined.jsonl" > "$out/pipelined.masked"
calls "$out/reference.jsonl" > "$out/reference.masked"
lines="$(wc -l < "$out/pipelined.masked")"
expected=$((2 * 1000 + 2 * 12))
if [ "$lines" -ne "$expected" ]; then
    echo "check-reference.sh: pipelined wrote $lines lines of the calls, not $expected" >&2
    exit 1
fi
if ! cmp "$out/pipelined.masked" "$out/reference.masked"; then
    diff "$out/pipelined.masked" "$out/reference.masked" | head -10 >&2
    exit 1
fi

# time - ktime_ns of the first families line (seconds of the day, mod 1 day):
# the two programs' wall-clock offsets agree to within a millisecond.
offset() {
    grep -m1 '"comm":"families"' "$1" |
        sed -E 's/^\{"time":"[0-9-]+T([0-9]{2}):([0-9]{2}):([0-9.]+)Z".*"ktime_ns":([0-9]+),.*/\1 \2 \3 \4/' |
        awk '{ d = $1 * 3600 + $2 * 60 + $3 - $4 / 1e9; d -= int(d / 86400) * 86400; if (d < 0) d += 86400; printf "%.6f\n", d }'
}
a="$(offset "$out/pipelined.jsonl")"
b="$(offset "$out/reference.jsonl")"
awk -v a="$a" -v b="$b" 'BEGIN { d = a - b; if (d < 0) d = -d; if (d > 43200) d = 86400 - d
    printf "wall-clock offsets (time - ktime_ns, mod 1 day): pipelined %.6f s, reference %.6f s, apart %.6f s\n", a, b, d
    exit d > 0.001 }'
echo "identical: $lines lines (time and ktime_ns masked); e.g."
grep -m1 '"comm":"f\\"' "$out/reference.jsonl"
