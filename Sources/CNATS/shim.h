#ifndef PIPELINED_CNATS_SHIM_H
#define PIPELINED_CNATS_SHIM_H
// The NATS C client (Debian's libnats-dev): connections, JetStream
// publish, streams and pull consumers. pipelined speaks no NATS protocol
// of its own.
#include <nats/nats.h>
#endif
