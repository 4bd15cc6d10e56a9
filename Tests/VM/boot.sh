#!/usr/bin/env bash
# Boots KERNEL in qemu with ROOT as its whole root file system (an initramfs)
# and ROOT/init as its first process; what init writes to /dev/ttyS1 is
# printed on stdout, and its console on stderr. Every dynamic ELF in ROOT gets the shared libraries it
# needs copied in beside it, and busybox provides the shell and mount.
#
#   Tests/VM/boot.sh KERNEL ROOT [TIMEOUT_SECONDS]
#
# With PIPELINED_VM_DISK=IMAGE, the raw disk image IMAGE is the guest's
# /dev/vda (virtio), kept by the host when the guest crashes.
#
# Used by the kprobe test (Tests/SourceTests/KprobeVMTests.swift) to run
# pipelined on a kernel that has kprobes, and by the machine crash test
# (Tests/FleetTests/FleetMachineCrashTests.swift); needs qemu-system-x86 and
# busybox-static.
set -euo pipefail
kernel=$1 root=$2 timeout=${3:-600}
[ -r "$kernel" ] || { echo "boot.sh: cannot read kernel $kernel" >&2; exit 2; }
[ -x "$root/init" ] || { echo "boot.sh: $root/init is not executable" >&2; exit 2; }
busybox=$(command -v busybox) || { echo "boot.sh: busybox (busybox-static) is missing" >&2; exit 2; }
qemu=$(command -v qemu-system-x86_64) || { echo "boot.sh: qemu-system-x86_64 (qemu-system-x86) is missing" >&2; exit 2; }

mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys" "$root/tmp"
cp "$busybox" "$root/bin/busybox"
# Shared libraries at the paths the dynamic loader looks for them.
find "$root" -type f -perm -u+x | while read -r elf; do
    { ldd "$elf" 2>/dev/null || true; } | awk '/=> \// { print $3 } /^\t\/lib/ { print $1 }' | while read -r lib; do
        mkdir -p "$root$(dirname "$lib")"
        [ -e "$root$lib" ] || cp -L "$lib" "$root$lib"
    done
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) > "$work/root.cpio"

# Software emulation unless PIPELINED_VM_KVM=1: nested KVM is not dependable
# on the VMs this project runs on (seen here: the guest spins before its
# kernel starts).
accel=(-machine accel=tcg -cpu max)
[ "${PIPELINED_VM_KVM:-}" = 1 ] && accel=(-enable-kvm)
disk=()
[ -n "${PIPELINED_VM_DISK:-}" ] && disk=(-drive "file=$PIPELINED_VM_DISK,format=raw,if=virtio")
timeout "$timeout" "$qemu" "${accel[@]}" "${disk[@]}" -m 2048 -smp 2 -nographic -no-reboot \
    -kernel "$kernel" -initrd "$work/root.cpio" \
    -append "console=ttyS0 quiet panic=-1 rdinit=/init" \
    -serial "file:$work/console.txt" -serial "file:$work/out.txt" -monitor none >/dev/null 2>"$work/qemu.err" || {
    status=$?
    echo "boot.sh: qemu failed or timed out (status $status)" >&2
    cat "$work/qemu.err" >&2
    tail -40 "$work/console.txt" >&2 || true
    exit 1
}
cat "$work/out.txt"
# The guest's console (kernel messages, init's errors) for the caller's diagnostics.
cat "$work/console.txt" >&2
