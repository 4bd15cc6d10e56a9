import Atomics

/// Where a source's batches go next: through filters, into sink queues.
public indirect enum Route: Sendable {
    case filter(id: String, any EventFilter, StageMetrics, [Route])
    case sink(id: String, SinkQueue)
}

/// What a source pushes its batches into. Filtering happens inline, on the
/// calling (source) thread; a push into a full blocking queue waits there,
/// which is how back-pressure reaches a source.
///
/// A reload rewires a running source with ``replaceRoutes(_:)``: each batch
/// goes wholly along the routes before or wholly along the routes after,
/// never both and never neither.
public final class SourceOutput: Sendable {
    public let metrics: StageMetrics
    /// The most records the source should put in one batch.
    public let batchEvents: Int
    /// The node of the `lost` records ``emitLost(count:site:cpu:)`` makes.
    public let node: NodeID
    private let stopping = ManagedAtomic<Bool>(false)
    /// Held while a batch is delivered, and to swap the routes. Only the
    /// source's own thread emits, so it is contended only during a reload.
    private let routesLock = ConditionLock()
    // Guarded by `routesLock`.
    private nonisolated(unsafe) var currentRoutes: [Route]

    public init(routes: [Route], metrics: StageMetrics, batchEvents: Int = 512, node: NodeID = .host) {
        self.currentRoutes = routes
        self.metrics = metrics
        self.batchEvents = batchEvents
        self.node = node
    }

    /// Where batches go now.
    public var routes: [Route] { routesLock.withLock { currentRoutes } }

    /// Makes later batches go along `routes`. Waits while a batch is being
    /// delivered (a push into a full blocking queue included), so that when
    /// it returns no batch is still on its way along the old routes.
    public func replaceRoutes(_ routes: [Route]) {
        routesLock.withLock { currentRoutes = routes }
    }

    /// Pushes one batch downstream: every route gets it (fan-out shares the
    /// storage until a filter removes something). Gives back the source's
    /// hold on the batch's ``BatchCompletion`` once every route has it.
    public func emit(_ batch: EventBatch) {
        defer { batch.completion?.release(written: true) }
        guard !batch.isEmpty else { return }
        metrics.add(metrics.recordsIn, UInt64(batch.count))
        routesLock.withLock {
            for route in currentRoutes { Self.deliver(batch, along: route) }
        }
        metrics.add(metrics.recordsOut, UInt64(batch.count))
    }

    private static func deliver(_ batch: EventBatch, along route: Route) {
        switch route {
        case .sink(_, let queue):
            queue.push(batch)
        case .filter(_, let filter, let metrics, let next):
            var kept = batch
            filter.apply(&kept)
            metrics.add(metrics.recordsIn, UInt64(batch.count))
            metrics.add(metrics.recordsOut, UInt64(kept.count))
            guard !kept.isEmpty else { return }
            for route in next { deliver(kept, along: route) }
        }
    }

    /// Reports events the source lost before it could read them (a full kernel
    /// buffer): a `lost` record goes downstream like any other record.
    public func emitLost(count: UInt64, site: LossSite = .kernel, cpu: Int32? = nil) {
        guard count > 0 else { return }
        metrics.addLost(count, at: site)
        emit(EventBatch([.lost(LostRecord(timeNs: Clock.wallNs(), count: count, site: site, cpu: cpu, node: node))]))
    }

    /// True once the pipeline asked sources to stop.
    public var isStopping: Bool { stopping.load(ordering: .acquiring) }

    /// Called by the runtime together with ``EventSource/stop()``.
    public func markStopping() { stopping.store(true, ordering: .releasing) }
}
