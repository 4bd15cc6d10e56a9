#!/usr/bin/env bash
# Builds the libFuzzer harnesses (optimized, libFuzzer + AddressSanitizer, in
# .build-fuzz) and runs each for SECONDS (default 60) on its committed seed
# corpus and regressions, with leak detection on. Fails when any harness
# finds a crash, a broken property, a leak, a timeout (one input over 10 s)
# or an input using more than 2 GiB. Prints each harness's executions per
# second and coverage (cov: edges, ft: features) at the end.
#   fuzz/run.sh [SECONDS] [HARNESS...]
# New inputs a run finds go to .build-fuzz/work/HARNESS (not the committed
# corpus); a failing input is saved in .build-fuzz/artifacts/HARNESS/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
[[ $# -gt 0 ]] && shift
harnesses=("$@")
[[ ${#harnesses[@]} -gt 0 ]] || harnesses=(wire_decoder ndjson_decoder pipeline_loader segment_reader manifest_reader)

build=(swift build -c release --package-path fuzz --scratch-path .build-fuzz --toolset fuzz/toolset.json)
"${build[@]}"
bin=$("${build[@]}" --show-bin-path)

# Swift's own crash backtracer would race ASan's report; libFuzzer prints the stack.
export SWIFT_BACKTRACE=enable=no
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}

failed=()
summary=()
for harness in "${harnesses[@]}"; do
    work=.build-fuzz/work/$harness
    artifacts=.build-fuzz/artifacts/$harness
    log=.build-fuzz/logs/$harness.log
    mkdir -p "$work" "$artifacts" "$(dirname "$log")" "fuzz/regressions/$harness"
    echo "== $harness: $seconds s"
    status=0
    "$bin/$harness" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -detect_leaks=1 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" \
        "$work" "fuzz/corpus/$harness" "fuzz/regressions/$harness" > "$log" 2>&1 || status=$?
    # libFuzzer's last status line: "#N DONE cov: C ft: F corp: ... exec/s: E rss: R".
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo '?')
    rate=$(grep -oE 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo '?')
    cov=$(grep -oE 'cov: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || echo '?')
    ft=$(grep -oE 'ft: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || echo '?')
    summary+=("$(printf '%-16s %10s runs %8s exec/s   cov: %-6s ft: %-6s %s' "$harness" "$runs" "$rate" "$cov" "$ft" "$([[ $status -eq 0 ]] && echo ok || echo FAILED)")")
    if [[ $status -ne 0 ]]; then
        failed+=("$harness")
        echo "-- $harness failed (exit $status); the end of $log:"
        tail -n 60 "$log"
        ls -l "$artifacts"
    fi
done

echo "== fuzz summary ($seconds s each)"
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzzing failed: ${failed[*]} (inputs in .build-fuzz/artifacts/)"
    exit 1
fi
