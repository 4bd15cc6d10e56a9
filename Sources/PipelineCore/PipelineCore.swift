/// PipelineCore: events, their wire and text formats, stages and the runtime
/// that wires them into a pipeline.
///
/// How records flow (each arrow is a batch of ``PipelineRecord``s):
///
/// ```
///   source thread                     inline on the               one thread
///   (one per source)                  producer's thread           per sink
///  ┌──────────────────┐  emit(batch)  ┌──────────────┐  push   ┌──────────────┐
///  │ syscall_monitor  │──────────────▶│ filter chain │────────▶│ bounded queue│──▶ sink.write(batch)
///  │  perf/ringbuf    │       │       │ event_id ... │  ...    │ block | drop │     (file, lz4, socket)
///  │  → WireDecoder   │       │       └──────────────┘         └──────────────┘
///  └──────────────────┘       │ fan-out: every downstream edge gets the batch
///  ┌──────────────────┐       │ (copy-on-write: no copy unless a filter drops)
///  │ replay (NDJSON)  │───────┘ fan-in: any number of producers push to a queue
///  └──────────────────┘
/// ```
///
/// - Sources run on threads of their own (their reads block) and push batches
///   through ``SourceOutput``.
/// - Filters are pure and cheap: they run inline on whichever source thread
///   pushes, so a filter never needs a queue or a thread.
/// - Every sink owns one bounded queue and one thread. A full queue either
///   blocks its producers (back-pressure down to the kernel buffer, where loss
///   is counted) or drops the batch and counts it; the count reaches the sink as
///   a ``LostRecord`` with `where: queue`. Nothing is lost silently.
/// - A source that must know when its records are safe downstream (a broker
///   it acknowledges) attaches a ``BatchCompletion`` to a batch: it completes
///   once every sink queue the batch reached has written it or counted it.
/// - Shutdown: sources stop, the producers return, each queue drains, each sink
///   is closed. See ``PipelineRuntime``.
public enum PipelineCoreInfo {
    /// The version string printed by `pipelined --version`.
    public static let version = "0.1.0"
}
