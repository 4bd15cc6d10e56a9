#!/usr/bin/env bash
# The soak: does a long run keep its memory and its file descriptors?
#
# Runs the default pipeline (every supported syscall event into a file sink,
# here a rotating file instead of stdout) plus an lz4_segments archive and a
# unix_socket sink with two real clients (`pipelined tail` and socat), under
# bench/soak/load.c's mixed syscall load (opens, connects, unlinks, execs),
# for DURATION. Every 10 s it samples the pipeline's RSS, open descriptors,
# CPU and events into a CSV. Fails (exit 1, saying why) if RSS grows by more
# than 10 % over its value at the first minute, if the descriptor count ever
# exceeds its value at the first minute, if a client was disconnected, if
# the run does not end cleanly or the archive does not verify.
#
#   bench/soak/run.sh DURATION          DURATION: seconds, or 2m, 1h (CI: 2m)
#   RATE=2000 bench/soak/run.sh 1h      load rounds a second (default 2000;
#                                       a round is about 12 syscalls)
#   PIPELINED=/path/to/pipelined bench/soak/run.sh 1h   that binary (default:
#                                       `swift build`'s debug one, built if needed)
#   OUT=DIR bench/soak/run.sh 2m        where the samples go (default bench/out/soak)
#
# Writes OUT/samples.csv (elapsed_s,rss_kib,fds,cpu_percent,events,events_per_s),
# OUT/summary.txt and the pipeline's log; bench/soak/plot.sh draws the CSV.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${OUT:-$root/bench/out/soak}"
rate="${RATE:-2000}"
interval=10
warmup=60

usage() { echo "usage: bench/soak/run.sh DURATION (seconds, or such as 2m, 1h)" >&2; exit 2; }
[ $# -eq 1 ] || usage
case "$1" in
    *h) duration=$(( ${1%h} * 3600 )) ;;
    *m) duration=$(( ${1%m} * 60 )) ;;
    *s) duration=${1%s} ;;
    *) duration=$1 ;;
esac
[[ "$duration" =~ ^[0-9]+$ ]] || usage
[ "$duration" -gt "$warmup" ] || { echo "run.sh: DURATION must be more than the first minute (${warmup}s)" >&2; exit 2; }

for tool in socat cc awk; do
    command -v "$tool" > /dev/null || { echo "run.sh: $tool is missing" >&2; exit 1; }
done
if [ -n "${PIPELINED:-}" ]; then
    pipelined="$PIPELINED"
else
    (cd "$root" && swift build --product pipelined > /dev/null) || { echo "run.sh: swift build failed" >&2; exit 1; }
    pipelined="$(cd "$root" && swift build --show-bin-path)/pipelined"
fi

rm -rf "${out:?}"
mkdir -p "$out/data/archive"
data="$out/data"
cc -O1 -Wall -o "$out/load" "$here/load.c"

# The default pipeline (pipelines/default.yaml), its file sink rotating
# (bounded on disk), plus the archive and the socket. Privileges are dropped
# (the default): the soak runs as a pipeline does.
cat > "$out/soak.yaml" <<YAML
name: soak
settings:
  metrics: {listen: "127.0.0.1:0"}
sources:
  syscalls:
    type: syscall_monitor
sinks:
  stdout:
    type: file
    inputs: [syscalls]
    path: "$data/events.jsonl"
    rotate_bytes: 64MiB
    keep_files: 2
  archive:
    type: lz4_segments
    inputs: [syscalls]
    directory: "$data/archive"
    segment_bytes: 16MiB
    retention_bytes: 128MiB
  live:
    type: unix_socket
    inputs: [syscalls]
    path: "$data/live.sock"
YAML

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2> /dev/null || true; done
}
trap cleanup EXIT

"$pipelined" run "$out/soak.yaml" 2> "$out/pipelined.log" > /dev/null &
pipeline=$!
pids+=("$pipeline")
port=""
for _ in $(seq 600); do
    port="$(sed -n 's/.*metrics endpoint listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$out/pipelined.log" | head -1)"
    if [ -n "$port" ] && grep -q "privileges dropped\|drop_privileges is false" "$out/pipelined.log"; then break; fi
    kill -0 "$pipeline" 2> /dev/null || { echo "run.sh: pipelined did not start:" >&2; tail -20 "$out/pipelined.log" >&2; exit 1; }
    sleep 0.1
done
grep -q "privileges dropped\|drop_privileges is false" "$out/pipelined.log" || { echo "run.sh: pipelined did not start in 60 s" >&2; exit 1; }

"$pipelined" tail "$data/live.sock" > /dev/null 2> "$out/tail.log" &
tail_pid=$!
pids+=("$tail_pid")
socat -u UNIX-CONNECT:"$data/live.sock" - > /dev/null 2> "$out/socat.log" &
socat_pid=$!
pids+=("$socat_pid")
"$out/load" "$rate" "$data" 2> "$out/load.log" &
load_pid=$!
pids+=("$load_pid")

# Events: what the source put into the pipeline.
events() {
    # bash's /dev/tcp: no HTTP client needed.
    { exec 3<> "/dev/tcp/127.0.0.1/$port" && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 && cat <&3; exec 3<&-; } 2> /dev/null \
        | awk '/^pipelined_stage_events_out_total\{/ && /stage="syscalls"/ { sum += $NF } END { printf "%d\n", sum }'
}
ticks() { awk '{ print $14 + $15 }' "/proc/$pipeline/stat"; }
hz="$(getconf CLK_TCK)"

echo "elapsed_s,rss_kib,fds,cpu_percent,events,events_per_s" > "$out/samples.csv"
echo "== soak: ${duration}s, load $rate rounds/s, samples every ${interval}s in $out/samples.csv"
start=$(date +%s)
last_ticks=$(ticks)
last_events=$(events)
last_time=$start
elapsed=0
while [ "$elapsed" -lt "$duration" ]; do
    sleep $(( interval - ( $(date +%s) - start ) % interval ))
    now=$(date +%s)
    elapsed=$(( now - start ))
    kill -0 "$pipeline" 2> /dev/null || { echo "run.sh: pipelined ended during the soak:" >&2; tail -20 "$out/pipelined.log" >&2; exit 1; }
    # Descriptors and memory first, before the scrape opens a connection.
    fds=$(ls "/proc/$pipeline/fd" | wc -l)
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pipeline/status")
    t=$(ticks)
    e=$(events)
    span=$(( now - last_time ))
    [ "$span" -gt 0 ] || span=1
    cpu=$(awk -v d=$(( t - last_ticks )) -v hz="$hz" -v s="$span" 'BEGIN { printf "%.1f", 100 * d / hz / s }')
    rate_now=$(( (e - last_events) / span ))
    echo "$elapsed,$rss,$fds,$cpu,$e,$rate_now" >> "$out/samples.csv"
    printf '%6ss  rss %8s KiB  fds %4s  cpu %6s %%  events/s %8s\n' "$elapsed" "$rss" "$fds" "$cpu" "$rate_now"
    last_ticks=$t
    last_events=$e
    last_time=$now
done

failures=()
kill -0 "$tail_pid" 2> /dev/null || failures+=("the pipelined tail client was disconnected")
kill -0 "$socat_pid" 2> /dev/null || failures+=("the socat client was disconnected")
kill "$load_pid" 2> /dev/null || true
wait "$load_pid" 2> /dev/null || true
kill -TERM "$pipeline"
status=0
wait "$pipeline" || status=$?
[ "$status" -eq 0 ] || failures+=("pipelined exited $status")
wait "$tail_pid" 2> /dev/null || true
wait "$socat_pid" 2> /dev/null || true
pids=()
"$pipelined" archive verify "$data/archive" > "$out/verify.txt" 2>&1 || failures+=("archive verify failed: $(tail -1 "$out/verify.txt")")

# The first minute's sample is the base; every later one is held to it.
read -r base_rss base_fds max_rss max_fds samples < <(awk -F, -v w="$warmup" '
    NR > 1 && $1 >= w {
        if (!n) { br = $2; bf = $3 }
        if ($2 > mr) mr = $2
        if ($3 > mf) mf = $3
        n++
    }
    END { print br + 0, bf + 0, mr + 0, mf + 0, n + 0 }' "$out/samples.csv")
growth=$(awk -v b="$base_rss" -v m="$max_rss" 'BEGIN { printf "%.1f", b ? 100 * (m - b) / b : 0 }')
median_rate=$(awk -F, 'NR > 1 { print $6 }' "$out/samples.csv" | sort -n | awk '{ v[NR] = $1 } END { print NR ? v[int((NR + 1) / 2)] : 0 }')
{
    echo "duration ${duration}s, load $rate rounds/s, $samples samples after the first minute"
    echo "rss at the first minute ${base_rss} KiB, highest after it ${max_rss} KiB (+${growth} %, limit 10 %)"
    echo "fds at the first minute ${base_fds}, highest after it ${max_fds}"
    echo "events/s median $(printf '%s' "$median_rate") ($(awk -F, 'NR > 1 && (m == "" || $6 < m) { m = $6 } END { print m }' "$out/samples.csv")-$(awk -F, 'NR > 1 && $6 > m { m = $6 } END { print m + 0 }' "$out/samples.csv"))"
} | tee "$out/summary.txt"
[ "$samples" -gt 0 ] || failures+=("no sample after the first minute")
awk -v g="$growth" 'BEGIN { exit !(g > 10) }' && failures+=("RSS grew by ${growth} % after the first minute (${base_rss} -> ${max_rss} KiB)")
[ "$max_fds" -le "$base_fds" ] || failures+=("descriptors leaked: ${base_fds} at the first minute, up to ${max_fds} later")

if [ ${#failures[@]} -gt 0 ]; then
    for failure in "${failures[@]}"; do echo "soak FAILED: $failure" >&2; done
    exit 1
fi
echo "soak passed"
