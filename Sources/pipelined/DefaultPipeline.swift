/// The embedded default pipeline (SPEC section 7), the same text as
/// `pipelines/default.yaml` (a test keeps the two equal).
enum DefaultPipeline {
    static let yaml = """
# The default pipeline (SPEC section 7): every supported syscall event, as
# NDJSON on standard output. `pipelined run` with no file runs this.
name: default
sources:
  syscalls:
    type: syscall_monitor
sinks:
  stdout:
    type: file
    inputs: [syscalls]
    path: "-"
"""
}
