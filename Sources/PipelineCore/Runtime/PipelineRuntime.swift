#if canImport(Glibc)
import Glibc
#endif
import Atomics
import Logging

/// Runs a ``PipelinePlan``: one thread per source, one queue and thread per
/// sink, filters inline (see the picture in `PipelineCore.swift`).
///
/// Start: every source is prepared first (a missing privilege fails here,
/// before any sink creates a file or socket), then every sink is opened, then
/// the threads start. Stop: sources are told to stop and return after pushing
/// what they already read; when the last source has returned, every queue is
/// closed, each sink drains its queue and is closed. The pipeline also ends
/// by itself when every source reaches the end of its input.
public final class PipelineRuntime: Sendable {
    public let plan: PipelinePlan
    private let logger: Logger
    private let sources: [(stage: PlannedStage, source: any EventSource, output: SourceOutput)]
    private let sinks: [(stage: PlannedStage, sink: any EventSink, queue: SinkQueue)]
    /// Every stage's counters, by id.
    public let metrics: [String: StageMetrics]
    private let state = ConditionLock()
    // Guarded by `state`.
    private nonisolated(unsafe) var sourceThreads: [RuntimeThread] = []
    private nonisolated(unsafe) var sinkThreads: [RuntimeThread] = []
    private nonisolated(unsafe) var failures: [String] = []
    private nonisolated(unsafe) var started = false
    private let stopRequested = ManagedAtomic<Bool>(false)

    public init(plan: PipelinePlan, logger: Logger) {
        self.plan = plan
        self.logger = logger
        var metrics: [String: StageMetrics] = [:]
        for stage in plan.stages { metrics[stage.id] = StageMetrics() }
        self.metrics = metrics

        var queues: [String: SinkQueue] = [:]
        var sinks: [(PlannedStage, any EventSink, SinkQueue)] = []
        for stage in plan.stages {
            if case .sink(let sink) = stage.instance {
                let queue = SinkQueue(policy: stage.queue, metrics: metrics[stage.id]!)
                queues[stage.id] = queue
                sinks.append((stage, sink, queue))
            }
        }
        self.sinks = sinks

        func routes(from id: String) -> [Route] {
            plan.stages.filter { $0.inputs.contains(id) }.compactMap { next in
                switch next.instance {
                case .filter(let filter):
                    return .filter(id: next.id, filter, metrics[next.id]!, routes(from: next.id))
                case .sink:
                    return .sink(id: next.id, queues[next.id]!)
                case .source:
                    return nil
                }
            }
        }
        var sources: [(PlannedStage, any EventSource, SourceOutput)] = []
        for stage in plan.stages {
            if case .source(let source) = stage.instance {
                let output = SourceOutput(routes: routes(from: stage.id), metrics: metrics[stage.id]!, batchEvents: plan.settings.batchEvents)
                sources.append((stage, source, output))
            }
        }
        self.sources = sources
    }

    private func context(for stage: PlannedStage) -> StageContext {
        var stageLogger = logger
        stageLogger[metadataKey: "stage"] = "\(stage.id)"
        return StageContext(id: stage.id, logger: stageLogger, metrics: metrics[stage.id]!)
    }

    /// Prepares sources, opens sinks and starts every thread. Throws the first
    /// ``StageStartError``, after undoing what was already started.
    public func start() throws {
        // Sources first, then sinks; each step with what undoes it.
        let steps: [(stage: PlannedStage, start: () throws -> Void, undo: () -> Void)] =
            sources.map { stage, source, _ in (stage, { try source.prepare(self.context(for: stage)) }, { source.stop() }) }
            + sinks.map { stage, sink, _ in (stage, { try sink.open(self.context(for: stage)) }, { try? sink.close() }) }
        var undoes: [() -> Void] = []
        for step in steps {
            do {
                try step.start()
            } catch {
                undoes.forEach { $0() }
                throw Self.startError(step.stage.id, error)
            }
            undoes.append(step.undo)
        }
        let priority = StagePriority(boost: plan.settings.priorityBoost, logger: logger)
        state.withLock {
            started = true
            for (stage, sink, queue) in sinks {
                let stageContext = context(for: stage)
                sinkThreads.append(RuntimeThread(name: "sink:\(stage.id)") { [self] in
                    priority.apply()
                    self.drain(sink, queue: queue, context: stageContext)
                })
            }
            for (stage, source, output) in sources {
                let stageContext = context(for: stage)
                sourceThreads.append(RuntimeThread(name: "src:\(stage.id)") { [self] in
                    priority.apply()
                    do {
                        try source.run(output)
                    } catch {
                        self.fail(stage.id, "\(error)", logger: stageContext.logger)
                    }
                })
            }
        }
        // Close the queues once every source has returned.
        let threads = state.withLock { sourceThreads }
        _ = RuntimeThread(name: "pipeline-join") { [self] in
            for thread in threads { thread.join() }
            for (_, _, queue) in self.sinks { queue.close() }
        }
        logger.info("pipeline started", metadata: [
            "pipeline": "\(plan.name)", "sources": "\(sources.count)", "sinks": "\(sinks.count)",
        ])
    }

    private static func startError(_ id: String, _ error: any Error) -> StageStartError {
        if var startError = error as? StageStartError {
            startError.stage = id
            return startError
        }
        return StageStartError(stage: id, message: "\(error)")
    }

    private func drain(_ sink: any EventSink, queue: SinkQueue, context: StageContext) {
        let metrics = context.metrics
        // What a failed sink drops is lost `where: sink`.
        let sinkLoss = metrics.loss(.sink)
        var failed = false
        loop: while true {
            switch queue.pop(untilMonotonicNs: Clock.monotonicNs() + context.idleIntervalNs) {
            case .batch(let batch):
                if failed {
                    sinkLoss.add(batch.lossWeight)
                    continue
                }
                do {
                    try sink.write(batch)
                    metrics.add(metrics.recordsIn, UInt64(batch.count))
                } catch {
                    // Keep draining so that producers never block on a dead sink.
                    failed = true
                    sinkLoss.add(batch.lossWeight)
                    fail(context.id, "write failed: \(error)", logger: context.logger)
                }
            case .timedOut:
                guard !failed else { continue }
                do {
                    try sink.idle(nowNs: Clock.wallNs())
                } catch {
                    failed = true
                    fail(context.id, "\(error)", logger: context.logger)
                }
            case .finished:
                break loop
            }
        }
        do {
            try sink.close()
        } catch {
            fail(context.id, "close failed: \(error)", logger: context.logger)
        }
    }

    private func fail(_ id: String, _ message: String, logger: Logger) {
        logger.error("\(message)")
        state.withLock { failures.append("\(id): \(message)") }
        stop()
    }

    /// Asks every source to stop; the pipeline then drains and ends.
    /// Idempotent and callable from any thread (a signal handler's task).
    public func stop() {
        guard !stopRequested.exchange(true, ordering: .acquiringAndReleasing) else { return }
        logger.info("stopping: sources stop, queues drain")
        for (_, source, output) in sources {
            output.markStopping()
            source.stop()
        }
    }

    /// Blocks until every sink has drained and closed, or the drain timeout
    /// passes after a stop. Call from a thread of your own, not the
    /// cooperative pool (``run()`` does that for you).
    public func wait() -> RunSummary {
        let (sourceThreads, sinkThreads) = state.withLock { (self.sourceThreads, self.sinkThreads) }
        for thread in sourceThreads { thread.join() }
        let deadline = Clock.monotonicNs() + plan.settings.drainTimeoutNs
        var drained = true
        for thread in sinkThreads where !thread.join(untilMonotonicNs: deadline) {
            drained = false
        }
        if !drained {
            state.withLock { failures.append("queues did not drain within \(Units.formatDuration(plan.settings.drainTimeoutNs))") }
        }
        return RunSummary(metrics: metrics.mapValues(\.snapshot), failures: state.withLock { failures })
    }

    /// Every series of every stage, in plan order, each labelled with the
    /// stage's `stage` id and `type`: what the summary and the metrics
    /// endpoint list.
    public var series: [StageMetrics.Series] {
        plan.stages.flatMap { stage in
            (metrics[stage.id]?.series ?? []).map { series in
                var labelled = series
                labelled.labels["stage"] = stage.id
                labelled.labels["type"] = stage.type
                return labelled
            }
        }
    }

    /// Starts, waits on a thread of its own, and stops when the calling task
    /// is cancelled (graceful shutdown). Throws a ``StageStartError`` if the
    /// pipeline cannot start.
    public func run() async throws -> RunSummary {
        // Preparing sources (loading an eBPF program) and opening sinks
        // block: do it on a thread of its own, not the cooperative pool.
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            _ = RuntimeThread(name: "pipeline-start") { [self] in
                do {
                    try self.start()
                    continuation.resume()
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<RunSummary, Never>) in
                _ = RuntimeThread(name: "pipeline-wait") { [self] in
                    continuation.resume(returning: self.wait())
                }
            }
        } onCancel: {
            self.stop()
        }
    }
}

/// How a run ended.
public struct RunSummary: Sendable {
    /// Every stage's counters at the end, by id.
    public var metrics: [String: StageMetrics.Snapshot]
    /// Runtime failures (exit status 1); empty for a clean run.
    public var failures: [String]

    public var succeeded: Bool { failures.isEmpty }
}

/// `settings.priority_boost` for the stage threads: each takes the nice value
/// of the thread that started the pipeline, lowered by the boost (on Linux
/// the nice value is per thread). Lowering it needs CAP_SYS_NICE; without
/// it the stages run at the starting priority, and the log says so once.
struct StagePriority: Sendable {
    let nice: Int32?
    private let logger: Logger
    private let reported = ManagedAtomic<Bool>(false)

    init(boost: Int, logger: Logger) {
        self.logger = logger
        guard boost > 0 else {
            nice = nil
            return
        }
        #if canImport(Glibc)
        errno = 0
        let current = getpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0)
        nice = errno == 0 ? max(-20, current - Int32(clamping: boost)) : nil
        #else
        nice = nil
        #endif
        if let nice { logger.info("stage threads run at nice \(nice) (settings.priority_boost \(boost))") }
    }

    /// Sets the calling thread's nice value; call first thing on a stage thread.
    func apply() {
        #if canImport(Glibc)
        guard let nice else { return }
        if setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, nice) != 0,
           !reported.exchange(true, ordering: .relaxed) {
            logger.notice("priority_boost not applied, the stages keep their priority: \(String(cString: strerror(errno))) (raising it needs CAP_SYS_NICE)")
        }
        #endif
    }
}
