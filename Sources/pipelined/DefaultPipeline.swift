/// The embedded default pipeline (docs/command-line.md), the same text as
/// `pipelines/default.yaml` (a test keeps the two equal).
enum DefaultPipeline {
    static let yaml = """
# The default pipeline (docs/command-line.md): every supported syscall event, as
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
