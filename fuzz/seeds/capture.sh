#!/usr/bin/env bash
# Captures real records for the fuzz seeds: runs the built pipelined (root,
# eBPF) with syscall_monitor into a file and an lz4_segments archive while a
# small workload makes every kind of syscall it can, then replays a few of
# the captured lines into a second, small archive. Writes into OUT (default
# /tmp/pipelined-capture); make-seeds.py turns that into fuzz/corpus.
#   fuzz/seeds/capture.sh [OUT]
set -euo pipefail
out=${1:-/tmp/pipelined-capture}
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$root/.build/debug/pipelined
rm -rf "$out" && mkdir -p "$out"

cat > "$out/capture.yaml" <<YAML
name: capture
sources:
  kernel:
    type: syscall_monitor
sinks:
  file:
    type: file
    inputs: [kernel]
    path: $out/events.jsonl
  archive:
    type: lz4_segments
    inputs: [kernel]
    directory: $out/archive
    block_size: 64KiB
YAML
"$bin" run "$out/capture.yaml" > "$out/run.log" 2>&1 &
pid=$!
sleep 4
ls /tmp /etc > /dev/null
cat /etc/hostname > /dev/null
python3 - "$out" <<'PY'
import os, socket, sys
out = sys.argv[1]
for family, address in [(socket.AF_INET, ('127.0.0.1', 9)), (socket.AF_INET6, ('::1', 9)), (socket.AF_UNIX, '/nonexistent.sock')]:
    s = socket.socket(family)
    try: s.connect(address)
    except OSError: pass
    s.close()
l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(1); l.close()
os.mkdir(out + '/d'); os.rmdir(out + '/d')
open(out + '/f', 'w').close(); os.chown(out + '/f', 0, 0); os.unlink(out + '/f')
try: os.setuid(0)
except OSError: pass
PY
env -i /bin/echo a b c d e f g h i j k l m n o p q r s t u v w x y z > /dev/null
sleep 3
kill -INT $pid
wait $pid || true

# Small sealed segments through the real sink (the capture's own is too
# large for a seed): a few records in one block, and enough for three blocks.
for count in 12 600; do
    head -n $count "$out/events.jsonl" > "$out/first-$count.jsonl"
    cat > "$out/replay-$count.yaml" <<YAML
name: replay-$count
sources:
  capture:
    type: replay
    path: $out/first-$count.jsonl
sinks:
  archive:
    type: lz4_segments
    inputs: [capture]
    directory: $out/archive-$count
    block_size: 64KiB
YAML
    "$bin" run "$out/replay-$count.yaml" > "$out/replay-$count.log" 2>&1
done
ls -l "$out" "$out"/archive*
