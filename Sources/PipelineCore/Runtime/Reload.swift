/// A source that can take new options while it runs, without being stopped:
/// the kernel source changes its event set, skipped return values and
/// visibility through its maps, its programs staying attached.
///
/// The runtime asks before it replaces a running source whose options
/// changed. Returning true means the running source now behaves as
/// `replacement` would and `replacement` is dropped unprepared; returning
/// false (the change needs a new instance: another transport, say) makes the
/// runtime prepare and start `replacement` first, then stop this one, so that
/// nothing goes unseen in between. Throwing fails the reload, which must then
/// leave the source as it was. Called from the reloading thread while `run`
/// goes on in the source's own.
public protocol ReconfigurableSource: EventSource {
    func reconfigure(like replacement: any EventSource, context: StageContext) throws -> Bool
}

/// What ``PipelineRuntime/apply(_:)`` did, by stage id.
public struct ReloadReport: Sendable, Equatable {
    /// Same type and options: left running (maybe rewired).
    public var unchanged: [String] = []
    /// Sources that took their new options in place (``ReconfigurableSource``).
    public var reconfigured: [String] = []
    /// Changed: the old stage drained and closed, a new one started.
    public var replaced: [String] = []
    public var added: [String] = []
    /// Drained and closed.
    public var removed: [String] = []
    /// Settings that differ from the running ones and apply only at start.
    public var settingsNeedingRestart: [String] = []

    public init() {}

    /// True when nothing at all changed.
    public var isEmpty: Bool { reconfigured.isEmpty && replaced.isEmpty && added.isEmpty && removed.isEmpty }

    /// `unchanged 3, replaced [failed], added [new], removed [old]`.
    public var summary: String {
        var parts = ["unchanged \(unchanged.count)"]
        for (name, ids) in [("reconfigured", reconfigured), ("replaced", replaced), ("added", added), ("removed", removed)] where !ids.isEmpty {
            parts.append("\(name) [\(ids.joined(separator: ", "))]")
        }
        return parts.joined(separator: ", ")
    }
}

/// Why a reload was not applied; the running pipeline is as it was.
public struct ReloadError: Error, CustomStringConvertible, Sendable {
    public var description: String

    public init(_ description: String) {
        self.description = description
    }
}

extension PipelineRuntime {
    /// Replaces the running plan with `newPlan`, touching only what changed.
    ///
    /// Stages are matched by id. One with the same kind, type and options
    /// (``PlannedStage/hasSameConfiguration(as:)``) keeps running: a source
    /// stays attached, a sink keeps its files and clients. A changed source
    /// that is a ``ReconfigurableSource`` may take the change in place.
    /// Otherwise, in this order, so that no batch is lost or delivered twice
    /// to a stage that stays:
    ///
    /// 1. new and changed sources are prepared, new and changed sinks opened
    ///    and their threads started (a failure here undoes this step and
    ///    throws: the running pipeline is untouched);
    /// 2. every staying source is rewired at once to the new graph
    ///    (``SourceOutput/replaceRoutes(_:)``: a batch goes wholly by the old
    ///    routes or wholly by the new), new sources start;
    /// 3. replaced and removed sources are stopped and joined (a replaced
    ///    source's successor is already running, so no event goes unseen);
    /// 4. replaced and removed sinks, which nothing feeds any more, drain
    ///    their queues and are closed whole (frames and segments sealed).
    ///
    /// A stage keeps its ``StageMetrics`` across a replacement (same id).
    /// Settings apply at start only: those that differ are listed in the
    /// report. Blocks until the old stages are closed: call it from a thread
    /// of your own. Throws ``ReloadError`` or a ``StageStartError``.
    public func apply(_ newPlan: PipelinePlan) throws -> ReloadReport {
        try reloadLock.withLock { try applyLocked(newPlan) }
    }

    private func applyLocked(_ newPlan: PipelinePlan) throws -> ReloadReport {
        // What the new graph's paths keep, told to the new plan's sources: a
        // running source whose condition changes is reconfigured like one
        // whose options did.
        var newPlan = newPlan
        let pushdown = newPlan.pushDown()
        let (oldPlan, oldSources, oldSinks, oldFilters, oldMetrics, startPriority) = try state.withLock {
            guard started, !ended, !stopRequested.load(ordering: .acquiring) else {
                throw ReloadError("the pipeline is not running (starting or stopping)")
            }
            return (currentPlan, self.sources, self.sinks, self.filters, stageMetrics, self.priority)
        }
        var report = ReloadReport()
        report.settingsNeedingRestart = Self.changedSettings(oldPlan.settings, newPlan.settings)

        // What happens to each stage.
        var metrics: [String: StageMetrics] = [:]
        var keptSources: [RunningSource] = [], newSources: [RunningSource] = [], retiredSources: [RunningSource] = []
        var keptSinks: [RunningSink] = [], newSinks: [RunningSink] = [], retiredSinks: [RunningSink] = []
        var filters: [String: any EventFilter] = [:]
        for stage in newPlan.stages {
            let counters = oldMetrics[stage.id] ?? StageMetrics()
            metrics[stage.id] = counters
            let old = oldPlan.stage(stage.id)
            let same = old.map { $0.hasSameConfiguration(as: stage) } ?? false
            switch stage.instance {
            case .filter(let filter):
                if same, let kept = oldFilters[stage.id] {
                    filters[stage.id] = kept
                    report.unchanged.append(stage.id)
                } else {
                    filters[stage.id] = filter
                    if old == nil { report.added.append(stage.id) } else { report.replaced.append(stage.id) }
                }
            case .sink(let sink):
                if same, let running = oldSinks.first(where: { $0.stage.id == stage.id }) {
                    keptSinks.append(running)
                    report.unchanged.append(stage.id)
                } else {
                    newSinks.append(RunningSink(stage: stage, sink: sink, queue: SinkQueue(policy: stage.queue, metrics: counters, node: node)))
                    if old == nil { report.added.append(stage.id) } else { report.replaced.append(stage.id) }
                }
            case .source(let source):
                let running = oldSources.first { $0.stage.id == stage.id }
                let samePushdown = old?.pushed == stage.pushed
                if same, samePushdown, let running {
                    keptSources.append(running)
                    report.unchanged.append(stage.id)
                    continue
                }
                if let running, old?.kind == .source, old?.type == stage.type,
                   let reconfigurable = running.source as? ReconfigurableSource,
                   try reconfigurable.reconfigure(like: source, context: context(for: stage, metrics: counters)) {
                    keptSources.append(running)
                    report.reconfigured.append(stage.id)
                    continue
                }
                // Routes are set in step 2, once every new sink exists.
                newSources.append(RunningSource(stage: stage, source: source, output: SourceOutput(routes: [], metrics: counters, batchEvents: newPlan.settings.batchEvents, node: node)))
                if running == nil { report.added.append(stage.id) } else { report.replaced.append(stage.id) }
            }
        }
        let keptSinkIDs = Set(keptSinks.map(\.stage.id))
        let keptSourceIDs = Set(keptSources.map(\.stage.id))
        retiredSinks = oldSinks.filter { !keptSinkIDs.contains($0.stage.id) }
        retiredSources = oldSources.filter { !keptSourceIDs.contains($0.stage.id) }
        report.removed = oldPlan.stages.map(\.id).filter { newPlan.stage($0) == nil }
        // The plan that runs: a stage that stays is its running instance.
        for index in newPlan.stages.indices {
            let id = newPlan.stages[index].id
            if let running = keptSources.first(where: { $0.stage.id == id }) {
                newPlan.stages[index].instance = .source(running.source)
            } else if let running = keptSinks.first(where: { $0.stage.id == id }) {
                newPlan.stages[index].instance = .sink(running.sink)
            } else if let filter = filters[id] {
                newPlan.stages[index].instance = .filter(filter)
            }
        }
        if report.isEmpty, report.unchanged.count == newPlan.stages.count, Self.sameWiring(oldPlan, newPlan) {
            state.withLock { currentPlan = newPlan }
            return report
        }

        // 1. Acquire what the new stages need; the running ones are untouched on failure.
        try Self.acquire(sources: newSources, sinks: newSinks, contexts: { self.context(for: $0, metrics: metrics[$0.id]!) })
        let priority = startPriority ?? StagePriority(boost: 0, logger: logger)
        state.withLock {
            for running in newSinks {
                stageMetrics[running.stage.id] = metrics[running.stage.id]
                startThread(of: running, priority: priority)
            }
        }

        // 2. Rewire, then start the new sources.
        let allSinks = keptSinks + newSinks
        let routes = Self.routes(plan: newPlan, filters: filters, sinks: allSinks, metrics: metrics)
        for running in keptSources { running.output.replaceRoutes(routes[running.stage.id] ?? []) }
        for running in newSources { running.output.replaceRoutes(routes[running.stage.id] ?? []) }
        let stopping = state.withLock {
            for running in retiredSources { running.retired = true }
            for running in keptSources { running.stage = newPlan.stage(running.stage.id) ?? running.stage }
            currentPlan = newPlan
            sources = keptSources + newSources
            sinks = allSinks
            self.filters = filters
            stageMetrics = metrics
            for running in newSources { startThread(of: running, priority: priority) }
            return stopRequested.load(ordering: .acquiring)
        }
        if stopping {
            for running in newSources {
                running.output.markStopping()
                running.source.stop()
            }
        }

        // 3. Retire the old sources: their last batches go by the old routes.
        for running in retiredSources {
            running.source.stop()
            _ = state.withLock { running.thread }?.join()
        }
        // 4. Nothing feeds the retired sinks now: drain and close them whole.
        for running in retiredSinks {
            running.queue.close()
            _ = state.withLock { running.thread }?.join()
        }
        state.withLock { endIfEverySourceReturned() }
        for outcome in pushdown where report.reconfigured.contains(outcome.source) || report.added.contains(outcome.source) || report.replaced.contains(outcome.source) {
            if outcome.report != nil {
                logger.info("pushdown: \(outcome.explanation.joined(separator: " "))", metadata: ["stage": "\(outcome.source)"])
            }
        }
        logger.info("reloaded: \(report.summary)", metadata: ["pipeline": "\(newPlan.name)"])
        return report
    }

    /// True when every stage reads the same inputs in both plans.
    private static func sameWiring(_ old: PipelinePlan, _ new: PipelinePlan) -> Bool {
        old.stages.map { "\($0.id)<\($0.inputs)" } == new.stages.map { "\($0.id)<\($0.inputs)" }
    }

    /// The settings keys whose values differ.
    private static func changedSettings(_ old: PipelineSettings, _ new: PipelineSettings) -> [String] {
        var changed: [String] = []
        if old.batchEvents != new.batchEvents { changed.append("batch_events") }
        if old.drainTimeoutNs != new.drainTimeoutNs { changed.append("drain_timeout") }
        if old.logLevel != new.logLevel { changed.append("log_level") }
        if old.priorityBoost != new.priorityBoost { changed.append("priority_boost") }
        if old.metricsListen != new.metricsListen { changed.append("metrics.listen") }
        return changed
    }
}

