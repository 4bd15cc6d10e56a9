#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages pipelined needs, in one place for the
# README and CI, so that the two cannot drift apart:
#
#   scripts/install-packages.sh          build, run and test (everything the
#                                        README's two commands need)
#   scripts/install-packages.sh --vm     also what the VM tests boot
#                                        (qemu, busybox, Debian's kernel)
#
# Run as root on a machine with the Swift 6 toolchain. A mirror's hiccup
# should not fail an install: it is tried three times.
set -euo pipefail

# Building: libbpf and libelf (the eBPF loader), liblz4 (archive frames),
# zlib (libbpf's), libnats (the NATS C client of the nats source and sink),
# pkg-config (SwiftPM finds the libraries with it).
build=(libbpf-dev libelf-dev liblz4-dev zlib1g-dev libnats-dev pkg-config)
# Testing: lz4 reads archive segments back; socat and nc are socket
# clients; jq reads records; procps and util-linux give ps, setpriv and
# unshare (namespace and privilege tests); tmux is the terminal the `top`
# test reads its screen from; nats-server is the JetStream broker the fleet
# tests start (and the README's Fleet section uses), and openssl makes the
# certificates and signs the JWTs of the fleet's TLS and credentials tests;
# libfuse3-dev and fuse3 build and mount faultfs, the file system the fault
# tests make fail with EIO.
test=(lz4 socat netcat-openbsd jq procps util-linux tmux nats-server openssl libfuse3-dev fuse3)
# The VM tests: Debian's kernel, which has kprobes, booted in qemu (the
# kprobe test), and an ext4 disk image the machine crash test makes and reads.
vm=(qemu-system-x86 busybox-static cpio linux-image-amd64 e2fsprogs)

packages=("${build[@]}" "${test[@]}")
for arg in "$@"; do
    case "$arg" in
        --vm) packages+=("${vm[@]}") ;;
        *) echo "usage: $0 [--vm]" >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" != 0 ]; then
    echo "$0: run as root (apt-get installs system packages)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
for attempt in 1 2 3; do
    if apt-get update -q && apt-get install -y -q --no-install-recommends "${packages[@]}"; then
        exit 0
    fi
    [ "$attempt" = 3 ] && break
    sleep 10
done
echo "$0: could not install ${packages[*]}" >&2
exit 1
