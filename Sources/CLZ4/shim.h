#ifndef PIPELINED_CLZ4_SHIM_H
#define PIPELINED_CLZ4_SHIM_H
#include <lz4frame.h>
#endif
