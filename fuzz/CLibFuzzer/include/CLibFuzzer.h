#ifndef PIPELINED_CLIBFUZZER_H
#define PIPELINED_CLIBFUZZER_H

#include <stddef.h>
#include <stdint.h>

/// libFuzzer's driver, for a program with its own `main` (the harnesses are
/// SwiftPM executables, whose `main` SwiftPM provides): parses libFuzzer's
/// command line in `argc`/`argv` and runs `callback` on each input. Defined
/// by the toolchain's libclang_rt.fuzzer, linked in by `-sanitize=fuzzer`.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

#endif
