#!/usr/bin/env bash
# Builds the storm's C reference into DIR (default bench/out/connect):
#
#   DIR/pipelined.bpf.o   bpf/pipelined.bpf.c compiled as the BPFObjectPlugin
#                         does (Plugins/BPFEmbed: the same clang, found in the
#                         same order, the same flags, DWARF stripped), so that
#                         the reference loads the object the daemon embeds
#   DIR/reference         reference.c, cc -O2, linked with libbpf
#
#   bench/connect/build-reference.sh [DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dir="${1:-$root/bench/out/connect}"
mkdir -p "$dir"

# clang, in BPFEmbed's order: $PIPELINED_BPF_CLANG, the clang next to the
# toolchain's swift, clang on PATH, clang-21 ... clang-14.
candidates=()
[ -n "${PIPELINED_BPF_CLANG:-}" ] && candidates+=("$PIPELINED_BPF_CLANG")
if command -v swift > /dev/null; then candidates+=("$(dirname "$(realpath "$(command -v swift)")")/clang"); fi
if command -v clang > /dev/null; then candidates+=("$(command -v clang)"); fi
for version in $(seq 21 -1 14); do
    if command -v "clang-$version" > /dev/null; then candidates+=("$(command -v "clang-$version")"); fi
done
flags=(-target bpf -O2 -g -Wall -Werror -D__TARGET_ARCH_x86 -I "$root/bpf" -I /usr/include)
multiarch="/usr/include/$(uname -m)-linux-gnu"
[ -d "$multiarch" ] && flags+=(-I "$multiarch")
built=""
for clang in "${candidates[@]}"; do
    [ -x "$clang" ] || continue
    if "$clang" "${flags[@]}" -c "$root/bpf/pipelined.bpf.c" -o "$dir/pipelined.bpf.o" 2> "$dir/clang.log"; then
        built="$clang"
        break
    fi
done
if [ -z "$built" ]; then
    echo "build-reference.sh: cannot compile bpf/pipelined.bpf.c (tried: ${candidates[*]:-no clang})" >&2
    cat "$dir/clang.log" >&2 2> /dev/null || true
    exit 1
fi
objcopy="$(dirname "$(realpath "$built")")/llvm-objcopy"
[ -x "$objcopy" ] && "$objcopy" --strip-debug "$dir/pipelined.bpf.o"

# REFERENCE_CFLAGS: extra flags, such as -DOUT_FLUSH=262144 (the write size).
cc -O2 -Wall ${REFERENCE_CFLAGS:-} -o "$dir/reference" "$here/reference.c" -lbpf -lelf -lz
