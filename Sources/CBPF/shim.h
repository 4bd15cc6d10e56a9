#ifndef PIPELINED_CBPF_SHIM_H
#define PIPELINED_CBPF_SHIM_H
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <linux/perf_event.h>
#include <sys/epoll.h> /* the ring buffer reader waits with epoll */
#include "../../bpf/wire.h"
#endif
