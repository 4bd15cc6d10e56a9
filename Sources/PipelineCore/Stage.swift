import Logging

/// The three kinds of stage a pipeline file declares.
public enum StageKind: String, Sendable, CaseIterable {
    case source, filter, sink

    /// The pipeline file's top-level key for this kind (`sources`).
    public var sectionKey: String { rawValue + "s" }
}

/// A stage that produces records: the kernel, a file, a socket.
///
/// Lifecycle, driven by ``PipelineRuntime``:
/// 1. `init` (in the stage's factory) only decodes options: no side effects.
/// 2. ``prepare(_:)`` acquires what the source needs (loads and attaches an
///    eBPF program, opens a file) before any sink opens anything; throwing
///    ``StageStartError`` stops the pipeline with that error's exit status.
/// 3. ``run(_:)`` is called on a thread of its own and pushes batches into the
///    output until its input ends or ``stop()`` is called, then returns.
///    Blocking reads belong here, never on Swift's cooperative pool.
/// 4. ``stop()`` may be called from any thread, at any time, more than once;
///    it asks `run` to return soon. Records already read must still be pushed.
public protocol EventSource: AnyObject, Sendable {
    /// Acquires the source's resources. Called once, before any sink opens.
    func prepare(_ context: StageContext) throws
    /// Produces records until the input ends or ``stop()``; returns normally then.
    func run(_ output: SourceOutput) throws
    /// Asks ``run(_:)`` to return; idempotent, callable from any thread.
    func stop()
}

/// A stage that keeps or removes records.
///
/// Filters are pure: ``apply(_:)`` is called concurrently from every source
/// thread that feeds the filter, so a filter must hold no mutable state that is
/// not itself thread-safe. A filter passes `lost` records unless it says
/// otherwise (docs/pipeline-file.md).
public protocol EventFilter: Sendable {
    /// True when the record goes on downstream.
    func includes(_ record: PipelineRecord) -> Bool
    /// Removes the records that do not pass. The default calls ``includes(_:)``.
    func apply(_ batch: inout EventBatch)
}

extension EventFilter {
    @inlinable
    public func apply(_ batch: inout EventBatch) {
        // Leave the storage untouched (no copy) when every record passes.
        guard let firstDropped = batch.records.firstIndex(where: { !includes($0) }) else { return }
        // Otherwise compact in place by moving records: a dropped record is
        // destroyed, each kept one moves down once into the first hole. A
        // new array of copies, or `removeAll(where:)` (which swaps through
        // copies), retains and releases every string of every record it
        // touches: about a third of the decode-filter-encode chain.
        let count = batch.records.count
        var kept = firstDropped
        batch.records.withUnsafeMutableBufferPointer { records in
            guard let base = records.baseAddress else { return }
            for index in firstDropped..<count {
                if includes(base[index]) {
                    (base + kept).moveInitialize(from: base + index, count: 1)
                    kept += 1
                } else {
                    (base + index).deinitialize(count: 1)
                }
            }
            // The array still counts the slots past `kept`: give them a value
            // that owns nothing, so that removing them is cheap and sound.
            (base + kept).initialize(repeating: .lost(LostRecord(timeNs: 0, count: 0, site: .queue)), count: count - kept)
        }
        batch.records.removeLast(count - kept)
    }
}

/// A stage that writes records somewhere: a file, an archive, a socket.
///
/// Every method is called from the sink's own thread, one at a time:
/// ``open(_:)`` once before the sources start; ``write(_:)`` for each batch in
/// order; ``idle(nowNs:)`` when no batch arrived for a while (time-based
/// rotation); ``close()`` once after the queue has drained. Throwing from
/// `write` stops the pipeline with a runtime failure (exit 1); the sink is
/// still closed.
public protocol EventSink: AnyObject, Sendable {
    /// Opens files or sockets. Called once, after sources are prepared.
    func open(_ context: StageContext) throws
    /// Writes one batch. Records arrive in the order the queue received them.
    func write(_ batch: EventBatch) throws
    /// Called at least every ``StageContext/idleInterval`` while no batch arrives.
    func idle(nowNs: Int64) throws
    /// Flushes and closes everything; the last call the sink receives.
    func close() throws
}

extension EventSink {
    public func idle(nowNs: Int64) throws {}
}

/// What the runtime gives a stage when it starts.
public struct StageContext: Sendable {
    /// The stage id from the pipeline file.
    public let id: String
    /// A logger labelled with the stage id.
    public let logger: Logger
    /// The stage's counters, also what metrics and `top` will read.
    public let metrics: StageMetrics
    /// How often an idle sink's ``EventSink/idle(nowNs:)`` is called.
    public let idleIntervalNs: Int64

    public init(id: String, logger: Logger, metrics: StageMetrics, idleIntervalNs: Int64 = 200_000_000) {
        self.id = id
        self.logger = logger
        self.metrics = metrics
        self.idleIntervalNs = idleIntervalNs
    }
}

/// A failure to start a stage, with the process exit status it maps to
/// (77 for missing privilege, 1 otherwise; docs/command-line.md).
public struct StageStartError: Error, CustomStringConvertible, Sendable {
    public var stage: String
    public var message: String
    public var exitCode: Int32

    public init(stage: String, message: String, exitCode: Int32 = 1) {
        self.stage = stage
        self.message = message
        self.exitCode = exitCode
    }

    public var description: String { "\(stage): \(message)" }
}

/// A stage built from its options, ready to be wired.
public enum StageInstance: Sendable {
    case source(any EventSource)
    case filter(any EventFilter)
    case sink(any EventSink)

    public var kind: StageKind {
        switch self {
        case .source: .source
        case .filter: .filter
        case .sink: .sink
        }
    }
}
