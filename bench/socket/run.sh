#!/usr/bin/env bash
# The unix_socket benchmark: does a client that keeps up get every event
# while another one stalls? A `pipelined run` (the README's release build)
# replays connect records from a FIFO at RATE events/s for SECONDS into a
# unix_socket sink (`when_full: drop`) and a file sink (the reference count),
# served to three clients at once:
#
#   stalled   a python3 process that connects and reads nothing while events
#             flow; once the input has ended it reads what was kept for it
#             (so that its delivered + lost can be checked too)
#   socat     socat -u UNIX-CONNECT:SOCKET - > file
#   tail      pipelined tail SOCKET > file
#
# Reports per client: events delivered, events lost (the sum of the `count`s
# of its `lost` records) and whether delivered + lost == sent, for each
# client_buffer, rate and run; then the median, min and max over the runs.
#
#   bench/socket/run.sh
#   RATES="10000 40000 100000" SECONDS_PER_RUN=5 bench/socket/run.sh   (the defaults)
#   CLIENT_BUFFERS="1024 65536" bench/socket/run.sh                     (the defaults)
#   RUNS=5 bench/socket/run.sh                                          (default 3)
#   BATCH_EVENTS=4096 bench/socket/run.sh       (settings.batch_events; replay
#                                                batches at most rate/20 events)
#   PIPELINED=/path/to/pipelined bench/socket/run.sh   (that binary, not a build:
#                                                       to compare two versions)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/bench/out/socket"
rates="${RATES:-10000 40000 100000}"
seconds="${SECONDS_PER_RUN:-5}"
buffers="${CLIENT_BUFFERS:-1024 65536}"
runs="${RUNS:-3}"
mkdir -p "$out"
rm -rf "${out:?}"/run-* "$out"/runs.txt "$out"/results.txt

for tool in socat python3 awk; do
    command -v "$tool" > /dev/null || { echo "run.sh: $tool is missing" >&2; exit 1; }
done

if [ -n "${PIPELINED:-}" ]; then
    pipelined="$PIPELINED"
else
    echo "== building pipelined (swift build -c release --static-swift-stdlib)"
    (cd "$root" && swift build -c release --static-swift-stdlib --product pipelined > "$out/build.log" 2>&1) || { tail -20 "$out/build.log" >&2; exit 1; }
    pipelined="$(cd "$root" && swift build -c release --static-swift-stdlib --show-bin-path)/pipelined"
fi

# The input: the most any run sends, connect records as the CLI tests write
# them (Tests/CLITests/CommandTests.swift, connectLine), about 330 bytes each.
most=0
for rate in $rates; do [ $((rate * seconds)) -gt "$most" ] && most=$((rate * seconds)); done
if [ ! -f "$out/input.jsonl" ] || [ "$(wc -l < "$out/input.jsonl")" -ne "$most" ]; then
    echo "== writing $most input records"
    awk -v n="$most" 'BEGIN {
        for (i = 0; i < n; i++) {
            failed = (i % 3 == 0)
            printf "{\"time\":\"2026-11-24T16:34:13.%09dZ\",\"ktime_ns\":%d,\"event\":\"connect\",\"event_id\":42,", i % 1000000000, 8000000000 + i
            printf "\"scope\":\"network\",\"retval\":%d,\"result\":\"%s\",\"pid\":4242,\"ppid\":1,", failed ? -111 : 0, failed ? "ECONNREFUSED" : "ok"
            printf "\"host_pid\":4242,\"host_ppid\":1,\"uid\":0,\"pid_ns\":0,\"mnt_ns\":0,\"origin\":\"host\",\"comm\":\"python3\","
            printf "\"args\":{\"fd\":%d,\"addr\":{\"family\":\"AF_INET\",\"ip\":\"127.0.0.1\",\"port\":%d}}}\n", 3 + i % 5, 1 + i % 60000
        }
    }' > "$out/input.jsonl"
fi

# The stalled client: connects, says so, reads nothing until SIGUSR1, then
# copies everything to FILE until the sink closes.
cat > "$out/stalled.py" <<'PY'
import signal, socket, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
client.connect(sys.argv[1])
signal.sigwait({signal.SIGUSR1})
with open(sys.argv[2], "wb") as out:
    while True:
        data = client.recv(1 << 20)
        if not data:
            break
        out.write(data)
PY

# Waits until FILE contains PATTERN COUNT times.
wait_for() {
    local file="$1" pattern="$2" count="${3:-1}"
    for _ in $(seq 1 600); do
        [ "$(grep -c "$pattern" "$file" 2> /dev/null || true)" -ge "$count" ] && return 0
        sleep 0.1
    done
    echo "run.sh: timed out waiting for '$pattern' in $file" >&2
    return 1
}

# "delivered lost" of an NDJSON stream: connect lines, and the sum of the
# counts of its lost records.
tally() {
    awk '/"event":"lost"/ { match($0, /"count":[0-9]+/); lost += substr($0, RSTART + 8, RLENGTH - 8); next }
         /"event":"connect"/ { delivered++ }
         END { printf "%d %d", delivered, lost }' "$1"
}

# One run: prints "sent | delivered lost (stalled) | (socat) | (tail) | file".
run_once() {
    local buffer="$1" rate="$2" dir="$3"
    local sent=$((rate * seconds))
    # (run_once runs in a subshell: on a failure, end what it started.)
    trap 'kill $(jobs -p) 2> /dev/null || true' EXIT
    mkdir -p "$dir"
    mkfifo "$dir/input.fifo"
    cat > "$dir/pipeline.yaml" <<YAML
name: bench-socket${BATCH_EVENTS:+
settings:
  batch_events: $BATCH_EVENTS}
sources:
  replay:
    type: replay
    path: $dir/input.fifo
    rate: $rate
sinks:
  live:
    type: unix_socket
    inputs: [replay]
    path: $dir/live.sock
    client_buffer: $buffer
    when_full: drop
  reference:
    type: file
    inputs: [replay]
    path: $dir/file.jsonl
YAML
    "$pipelined" run "$dir/pipeline.yaml" > /dev/null 2> "$dir/pipelined.log" &
    local run_pid=$!
    wait_for "$dir/pipelined.log" "serving events"
    python3 "$out/stalled.py" "$dir/live.sock" "$dir/stalled.jsonl" &
    local stalled_pid=$!
    socat -u "UNIX-CONNECT:$dir/live.sock" - > "$dir/socat.jsonl" &
    local socat_pid=$!
    "$pipelined" tail "$dir/live.sock" > "$dir/tail.jsonl" &
    local tail_pid=$!
    wait_for "$dir/pipelined.log" "client connected" 3
    # The run replays at `rate`: head ends as the last records go in.
    local start end
    start="$(date +%s.%N)"
    head -n "$sent" "$out/input.jsonl" > "$dir/input.fifo"
    end="$(date +%s.%N)"
    kill -USR1 "$stalled_pid"
    wait "$run_pid"
    wait "$stalled_pid" "$socat_pid" "$tail_pid"
    echo "$sent $(tally "$dir/stalled.jsonl") $(tally "$dir/socat.jsonl") $(tally "$dir/tail.jsonl") $(tally "$dir/file.jsonl") $(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.2f", e - s }')"
    rm -f "$dir"/*.jsonl "$dir/input.fifo"
}

# runs.txt: buffer rate run | sent | stalled | socat | tail | file (delivered lost each) | feed seconds
: > "$out/runs.txt"
for buffer in $buffers; do
    for rate in $rates; do
        for run in $(seq 1 "$runs"); do
            echo "== client_buffer $buffer, $rate events/s for ${seconds}s: run $run/$runs"
            result="$(run_once "$buffer" "$rate" "$out/run-$buffer-$rate-$run")"
            echo "   $result"
            echo "$buffer $rate $run $result" >> "$out/runs.txt"
        done
    done
done

awk -v n="$runs" '
function median(a, k,   i, j, t, b) {
    for (i = 1; i <= k; i++) b[i] = a[i]
    for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (b[j] < b[i]) { t = b[i]; b[i] = b[j]; b[j] = t }
    return (k % 2) ? b[(k + 1) / 2] : (b[k / 2] + b[k / 2 + 1]) / 2
}
function range(a, k,   i, lo, hi) {
    lo = a[1]; hi = a[1]
    for (i = 2; i <= k; i++) { if (a[i] < lo) lo = a[i]; if (a[i] > hi) hi = a[i] }
    return (lo == hi) ? sprintf("%d", lo) : sprintf("%d–%d", lo, hi)
}
{
    key = $1 " " $2
    if (!(key in seen)) { seen[key] = 1; keys[++nkeys] = key }
    k = ++count[key]
    sent[key] = $4
    feed[key, k] = $13
    for (c = 0; c < 4; c++) {
        d[key, c, k] = $(5 + 2 * c); l[key, c, k] = $(6 + 2 * c)
        if ($(5 + 2 * c) + $(6 + 2 * c) != $4) bad[key, c]++
    }
}
END {
    split("stalled socat tail file", name, " ")
    printf "| client_buffer | events/s | sent | client | delivered (median, min–max) | lost (median, min–max) | delivered + lost = sent |\n"
    printf "|---:|---:|---:|---|---:|---:|---|\n"
    for (i = 1; i <= nkeys; i++) {
        key = keys[i]; split(key, f, " "); k = count[key]
        for (r = 1; r <= k; r++) ff[r] = feed[key, r]
        feeds[i] = sprintf("client_buffer %d, %d events/s: head wrote the input into the FIFO in %.2f s (median of %d runs)", f[1], f[2], median(ff, k), k)
        for (c = 0; c < 4; c++) {
            for (r = 1; r <= k; r++) { dd[r] = d[key, c, r]; ll[r] = l[key, c, r] }
            printf "| %d | %d | %d | %s | %d (%s) | %d (%s) | %s |\n", f[1], f[2], sent[key], (c == 3 ? "file sink" : name[c + 1]), median(dd, k), range(dd, k), median(ll, k), range(ll, k), (bad[key, c] ? sprintf("no (%d of %d runs)", bad[key, c], k) : sprintf("yes (%d runs)", k))
        }
    }
    printf "\n"
    for (i = 1; i <= nkeys; i++) print feeds[i]
}' "$out/runs.txt" | tee "$out/results.txt"
