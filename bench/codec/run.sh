#!/usr/bin/env bash
# The codec chain benchmark: Swift (codec-bench, release) against plain C
# (baseline.c, -O2), both decoding the same synthetic connect records, keeping
# failures (retval != 0), encoding NDJSON and writing it; plus decode alone,
# and (Swift only) the daemon's consumer path without the kernel: sink mode.
#
#   bench/codec/run.sh            10 million events per run, 3 runs each
#   EVENTS=2000000 RUNS=1 bench/codec/run.sh
#   CALLGRIND=1 bench/codec/run.sh   also sink mode's instructions per event
#
# Needs /usr/bin/time (Debian package `time`) for CPU time and peak RSS.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/bench/out/codec"
events="${EVENTS:-10000000}"
runs="${RUNS:-3}"
mkdir -p "$out"

if [ ! -x /usr/bin/time ]; then
    echo "run.sh: /usr/bin/time is missing (apt-get install time)" >&2
    exit 1
fi

# SwiftPM names a path package after its directory, so a checkout that is
# itself called `codec` would collide with this package (bench/codec). Build
# from a staged manifest (identity `codec-bench`) pointing at the same sources.
stage="$out/codec-bench"
mkdir -p "$stage"
sed "s|path: \"../..\"|path: \"$root\"|" "$here/Package.swift" > "$stage/Package.swift"
ln -sfn "$here/Sources" "$stage/Sources"
echo "== building codec-bench (swift build -c release) and baseline (cc -O2)"
if ! swift build -c release --package-path "$stage" > "$out/build.log" 2>&1; then
    grep -E "error" "$out/build.log" | head -20 >&2
    exit 1
fi
swift_bin="$(swift build -c release --package-path "$stage" --show-bin-path)/codec-bench"
cc -O2 -Wall -o "$out/baseline" "$here/baseline.c"

echo "== checking that both write the same bytes (200000 events)"
"$swift_bin" chain 200000 "$out/swift.ndjson" > /dev/null
"$out/baseline" chain 200000 "$out/c.ndjson" > /dev/null
cmp "$out/swift.ndjson" "$out/c.ndjson"
head -c 400 "$out/swift.ndjson"; echo "..."
echo "   identical: $(wc -l < "$out/swift.ndjson") lines"

# measure NAME MODE BINARY: runs it $runs times and keeps the run that used the
# least CPU time (on a shared machine wall time also counts the time the
# process waited for a CPU); prints one row and sets rate_NAME_MODE (events
# per CPU second) and wall_NAME_MODE (events per wall-clock second).
measure() {
    local name="$1" mode="$2" bin="$3" best_cpu="" best_line="" best_wall=0 best_rate=0
    for _ in $(seq "$runs"); do
        /usr/bin/time -v "$bin" "$mode" "$events" /dev/null > "$out/stdout" 2> "$out/time"
        local wall user sys rss cpu
        wall=$(sed -n 's/.*events_per_s=\([0-9]*\).*/\1/p' "$out/stdout")
        user=$(sed -n 's/.*User time (seconds): //p' "$out/time")
        sys=$(sed -n 's/.*System time (seconds): //p' "$out/time")
        rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$out/time")
        cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
        if [ -z "$best_cpu" ] || awk -v a="$cpu" -v b="$best_cpu" 'BEGIN { exit !(a < b) }'; then
            best_cpu=$cpu
            best_wall=$wall
            best_rate=$(awk -v c="$cpu" -v e="$events" 'BEGIN { printf "%d", e / (c > 0 ? c : 0.01) }')
            best_line=$(awk -v n="$name" -v m="$mode" -v w="$wall" -v c="$cpu" -v k="$rss" -v e="$events" \
                'BEGIN { printf "%-7s %-7s %14d %16d %13.1f %9.1f\n", n, m, w, e / (c > 0 ? c : 0.01), c * 1e9 / e, k / 1024 }')
        fi
    done
    echo "$best_line"
    eval "rate_${name}_${mode}=$best_rate"
    eval "wall_${name}_${mode}=$best_wall"
}

echo "== $events events per run, least CPU time of $runs runs"
printf "%-7s %-7s %14s %16s %13s %9s\n" program mode "events/s" "events/CPU-s" "CPU ns/event" "RSS MiB"
measure swift chain "$swift_bin"
measure c chain "$out/baseline"
measure swift decode "$swift_bin"
measure c decode "$out/baseline"
# The daemon's consumer path without the kernel (no filter, every record
# encoded into a reusable buffer as the file sink does): Swift only.
measure swift sink "$swift_bin"
awk -v sc="$rate_swift_chain" -v cc="$rate_c_chain" -v sd="$rate_swift_decode" -v cd="$rate_c_decode" \
    -v wsc="$wall_swift_chain" -v wcc="$wall_c_chain" -v wsd="$wall_swift_decode" -v wcd="$wall_c_decode" \
    'BEGIN {
        printf "ratio to C by CPU time:  chain %.2fx, decode %.2fx\n", sc / cc, sd / cd
        printf "ratio to C by wall time: chain %.2fx, decode %.2fx\n", wsc / wcc, wsd / wcd
    }'

# Instructions per event of the sink mode, which unlike times do not depend
# on what else the machine runs (CALLGRIND=1; needs valgrind). The
# binary's DWARF is stripped first: valgrind 3.19 cannot read Swift's.
if [ "${CALLGRIND:-0}" = 1 ]; then
    strip --strip-debug -o "$out/codec-bench.stripped" "$swift_bin"
    for count in 100000 300000; do
        valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.$count" "$out/codec-bench.stripped" sink "$count" /dev/null 2> "$out/callgrind.$count.log" > /dev/null
        eval "ir_$count=$(sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$out/callgrind.$count.log")"
    done
    # The difference of two lengths: start-up (building the pool) cancels out.
    awk -v a="$ir_100000" -v b="$ir_300000" 'BEGIN { printf "sink mode: %.0f instructions per event (callgrind, %d and %d instructions for 100k and 300k events)\n", (b - a) / 200000, a, b }'
fi
