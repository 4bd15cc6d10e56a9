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
///
/// While it runs, ``apply(_:)`` replaces the plan with another, changing only
/// the stages that differ (see `Reload.swift`).
public final class PipelineRuntime: Sendable {
    let logger: Logger
    /// The name records made here carry (`settings.node` when the runtime
    /// was made; a reload keeps it: a new node name needs a restart).
    let node: NodeID
    let state = ConditionLock()
    // Guarded by `state`.
    nonisolated(unsafe) var currentPlan: PipelinePlan
    nonisolated(unsafe) var sources: [RunningSource] = []
    nonisolated(unsafe) var sinks: [RunningSink] = []
    nonisolated(unsafe) var filters: [String: any EventFilter] = [:]
    nonisolated(unsafe) var stageMetrics: [String: StageMetrics] = [:]
    nonisolated(unsafe) var failures: [String] = []
    nonisolated(unsafe) var started = false
    /// Every live source has returned and the queues are closed: the end.
    nonisolated(unsafe) var ended = false
    let stopRequested = ManagedAtomic<Bool>(false)
    /// One reload at a time.
    let reloadLock = ConditionLock()
    /// The stage threads' priority, decided at start; reloads reuse it.
    nonisolated(unsafe) var priority: StagePriority?

    /// What each source was told its paths keep, for the start's log.
    let pushdown: [PipelinePlan.PushdownOutcome]

    /// Builds the running stages of `plan`, first telling every source that
    /// can skip records what its paths to the sinks keep (``PipelinePlan/pushDown()``).
    public init(plan: PipelinePlan, logger: Logger) {
        var plan = plan
        pushdown = plan.pushDown()
        self.currentPlan = plan
        self.logger = logger
        self.node = plan.settings.nodeID
        for stage in plan.stages { stageMetrics[stage.id] = StageMetrics() }
        for stage in plan.stages {
            switch stage.instance {
            case .sink(let sink):
                sinks.append(RunningSink(stage: stage, sink: sink, queue: SinkQueue(policy: stage.queue, metrics: stageMetrics[stage.id]!, node: node)))
            case .filter(let filter):
                filters[stage.id] = filter
            case .source:
                break
            }
        }
        let routes = Self.routes(plan: plan, filters: filters, sinks: sinks, metrics: stageMetrics)
        for stage in plan.stages {
            if case .source(let source) = stage.instance {
                let output = SourceOutput(routes: routes[stage.id] ?? [], metrics: stageMetrics[stage.id]!, batchEvents: plan.settings.batchEvents, node: node)
                sources.append(RunningSource(stage: stage, source: source, output: output))
            }
        }
    }

    /// The plan running now (the last one ``apply(_:)`` put in place).
    public var plan: PipelinePlan { state.withLock { currentPlan } }

    /// Every stage's counters, by id. A stage that a reload replaced keeps
    /// its counters (same id, same object); a removed stage's are dropped.
    public var metrics: [String: StageMetrics] { state.withLock { stageMetrics } }

    /// True once every source of the running plan is prepared (attached,
    /// for the kernel source) and every thread started, until the end.
    public var isReady: Bool { state.withLock { started && !ended } }

    /// What the metrics endpoint reads for each stage, in plan order.
    public struct StageStatus: Sendable {
        /// The stage id, its `type` and its kind.
        public var id: String
        public var type: String
        public var kind: StageKind
        /// The stage's counters (the same object across reloads that keep its id).
        public var metrics: StageMetrics
        /// Sinks: records waiting in the queue, and its capacity.
        public var queueDepth: Int?
        public var queueCapacity: Int?
    }

    /// A reading of every stage of the running plan: cheap (relaxed loads and
    /// one lock per queue), for scrapes.
    public var stages: [StageStatus] {
        let (plan, metrics, sinks) = state.withLock { (currentPlan, stageMetrics, self.sinks) }
        let queues = Dictionary(sinks.map { ($0.stage.id, $0.queue) }, uniquingKeysWith: { _, last in last })
        return plan.stages.compactMap { stage in
            guard let counters = metrics[stage.id] else { return nil }
            let queue = queues[stage.id]
            return StageStatus(id: stage.id, type: stage.type, kind: stage.kind, metrics: counters,
                               queueDepth: queue?.depth, queueCapacity: queue?.policy.capacityEvents)
        }
    }

    /// The routes of every source and filter: where each one's batches go.
    static func routes(plan: PipelinePlan, filters: [String: any EventFilter], sinks: [RunningSink], metrics: [String: StageMetrics]) -> [String: [Route]] {
        let queues = Dictionary(sinks.map { ($0.stage.id, $0.queue) }, uniquingKeysWith: { _, last in last })
        func routes(from id: String) -> [Route] {
            plan.stages.filter { $0.inputs.contains(id) }.compactMap { next in
                switch next.kind {
                case .filter:
                    guard let filter = filters[next.id], let counters = metrics[next.id] else { return nil }
                    return .filter(id: next.id, filter, counters, routes(from: next.id))
                case .sink:
                    return queues[next.id].map { .sink(id: next.id, $0) }
                case .source:
                    return nil
                }
            }
        }
        var result: [String: [Route]] = [:]
        for stage in plan.stages where stage.kind == .source { result[stage.id] = routes(from: stage.id) }
        return result
    }

    func context(for stage: PlannedStage, metrics: StageMetrics) -> StageContext {
        var stageLogger = logger
        stageLogger[metadataKey: "stage"] = "\(stage.id)"
        return StageContext(id: stage.id, logger: stageLogger, metrics: metrics, node: node)
    }

    /// Prepares sources, opens sinks and starts every thread. Throws the first
    /// ``StageStartError``, after undoing what was already started.
    public func start() throws {
        let (plan, sources, sinks, metrics) = state.withLock { (currentPlan, self.sources, self.sinks, stageMetrics) }
        try Self.acquire(sources: sources, sinks: sinks, contexts: { self.context(for: $0, metrics: metrics[$0.id]!) })
        let priority = StagePriority(boost: plan.settings.priorityBoost, logger: logger)
        state.withLock {
            started = true
            self.priority = priority
            for running in sinks { startThread(of: running, priority: priority) }
            for running in sources { startThread(of: running, priority: priority) }
        }
        for outcome in pushdown where outcome.report != nil {
            logger.info("pushdown: \(outcome.explanation.joined(separator: " "))", metadata: ["stage": "\(outcome.source)"])
        }
        logger.info("pipeline started", metadata: [
            "pipeline": "\(plan.name)", "sources": "\(sources.count)", "sinks": "\(sinks.count)",
        ])
    }

    /// Prepares `sources`, then opens `sinks`; on a failure, undoes what it
    /// did and throws the stage's ``StageStartError``.
    static func acquire(sources: [RunningSource], sinks: [RunningSink], contexts: @escaping (PlannedStage) -> StageContext) throws {
        // Sources first, then sinks; each step with what undoes it.
        let steps: [(stage: PlannedStage, start: () throws -> Void, undo: () -> Void)] =
            sources.map { running in (running.stage, { try running.source.prepare(contexts(running.stage)) }, { running.source.stop() }) }
            + sinks.map { running in (running.stage, { try running.sink.open(contexts(running.stage)) }, { try? running.sink.close() }) }
        var undoes: [() -> Void] = []
        for step in steps {
            do {
                try step.start()
            } catch {
                undoes.forEach { $0() }
                throw startError(step.stage.id, error)
            }
            undoes.append(step.undo)
        }
    }

    /// Starts a sink's thread; `state` must be held.
    func startThread(of running: RunningSink, priority: StagePriority) {
        let stageContext = context(for: running.stage, metrics: stageMetrics[running.stage.id]!)
        running.thread = RuntimeThread(name: "sink:\(running.stage.id)") { [self] in
            priority.apply()
            self.drain(running.sink, queue: running.queue, context: stageContext)
        }
    }

    /// Starts a source's thread; `state` must be held.
    func startThread(of running: RunningSource, priority: StagePriority) {
        let stageContext = context(for: running.stage, metrics: stageMetrics[running.stage.id]!)
        let (source, output) = (running.source, running.output)
        running.thread = RuntimeThread(name: "src:\(stageContext.id)") { [self] in
            priority.apply()
            do {
                try source.run(output)
            } catch {
                self.fail(stageContext.id, "\(error)", logger: stageContext.logger)
            }
            self.sourceReturned(running)
        }
    }

    /// A source's thread is done. Once every source of the running plan has
    /// returned, the queues close and the sinks drain: the pipeline ends. A
    /// source a reload retired does not count (its replacement does).
    private func sourceReturned(_ running: RunningSource) {
        state.withLock {
            running.returned = true
            if !running.retired { endIfEverySourceReturned() }
        }
    }

    /// Closes every queue once no source of the running plan is left; `state`
    /// must be held.
    func endIfEverySourceReturned() {
        guard started, !ended, sources.allSatisfy(\.returned) else { return }
        ended = true
        for sink in sinks { sink.queue.close() }
        state.broadcast()
    }

    static func startError(_ id: String, _ error: any Error) -> StageStartError {
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
                    batch.completion?.release(written: false)
                    continue
                }
                do {
                    try sink.write(batch)
                    metrics.add(metrics.recordsIn, UInt64(batch.count))
                    batch.completion?.release(written: true)
                } catch {
                    // Keep draining so that producers never block on a dead sink.
                    failed = true
                    sinkLoss.add(batch.lossWeight)
                    batch.completion?.release(written: false)
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
        let sources = state.withLock { self.sources }
        for running in sources {
            running.output.markStopping()
            running.source.stop()
        }
    }

    /// Blocks until every sink has drained and closed, or the drain timeout
    /// passes after a stop. Call from a thread of your own, not the
    /// cooperative pool (``run()`` does that for you).
    public func wait() -> RunSummary {
        // A reload in progress finishes first; none starts once ended.
        state.withLock {
            while started && !ended { state.wait() }
        }
        let (plan, sinks) = state.withLock { (currentPlan, self.sinks) }
        let deadline = Clock.monotonicNs() + plan.settings.drainTimeoutNs
        var drained = true
        for running in sinks where !(running.thread?.join(untilMonotonicNs: deadline) ?? true) {
            drained = false
        }
        if !drained {
            state.withLock { failures.append("queues did not drain within \(Units.formatDuration(plan.settings.drainTimeoutNs))") }
        }
        return state.withLock { RunSummary(metrics: stageMetrics.mapValues(\.snapshot), failures: failures) }
    }

    /// Every series of every stage, in plan order, each labelled with the
    /// stage's `stage` id and `type`: what the summary and the metrics
    /// endpoint list.
    public var series: [StageMetrics.Series] {
        let (plan, metrics) = state.withLock { (currentPlan, stageMetrics) }
        return plan.stages.flatMap { stage in
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

/// A source of the running pipeline and its thread.
///
/// `@unchecked Sendable`: the mutable fields are written and read only with
/// the runtime's `state` lock held (`thread` is set once, under it, before
/// anyone reads it; `stage` changes only under it, in a reload).
final class RunningSource: @unchecked Sendable {
    var stage: PlannedStage
    let source: any EventSource
    let output: SourceOutput
    var thread: RuntimeThread?
    /// `run` has returned.
    var returned = false
    /// A reload replaced or removed it: its end is not the pipeline's.
    var retired = false

    init(stage: PlannedStage, source: any EventSource, output: SourceOutput) {
        self.stage = stage
        self.source = source
        self.output = output
    }
}

/// A sink of the running pipeline, its queue and its thread.
///
/// `@unchecked Sendable`: `thread` is set once, under the runtime's `state`
/// lock, before anyone reads it.
final class RunningSink: @unchecked Sendable {
    let stage: PlannedStage
    let sink: any EventSink
    let queue: SinkQueue
    var thread: RuntimeThread?

    init(stage: PlannedStage, sink: any EventSink, queue: SinkQueue) {
        self.stage = stage
        self.sink = sink
        self.queue = queue
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
