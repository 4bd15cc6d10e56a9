import Atomics
import Logging
import PipelineCore
import PipelineTesting
import Testing

/// What each completion reported, by batch number.
final class CompletionLog: Sendable {
    private let lock = ConditionLock()
    // Guarded by `lock`.
    private nonisolated(unsafe) var entries: [(batch: Int, written: Bool)] = []

    func completion(_ batch: Int) -> BatchCompletion {
        BatchCompletion { written in
            self.lock.withLock {
                self.entries.append((batch, written))
                self.lock.broadcast()
            }
        }
    }

    var reported: [(batch: Int, written: Bool)] { lock.withLock { entries } }

    /// Waits up to 10 s for `count` reports.
    func wait(for count: Int) -> Bool {
        let deadline = Clock.monotonicNs() + 10_000_000_000
        return lock.withLock {
            while entries.count < count {
                if !lock.wait(untilMonotonicNs: deadline), Clock.monotonicNs() >= deadline { return false }
            }
            return true
        }
    }
}

/// Emits `batches` batches of `size` events, each with a completion from `log`.
final class CompletingSource: EventSource {
    let log: CompletionLog
    let batches: Int
    let size: Int

    init(log: CompletionLog, batches: Int, size: Int = 10) {
        self.log = log
        self.batches = batches
        self.size = size
    }

    func prepare(_ context: StageContext) throws {}
    func run(_ output: SourceOutput) throws {
        for batch in 0..<batches {
            let records = (0..<size).map { PipelineRecord.event(StageHarness.event(timeNs: Int64(batch * size + $0))) }
            output.emit(EventBatch(records, completion: log.completion(batch)))
        }
    }
    func stop() {}
}

/// Keeps every completion it is given until `close()`, as a sink that fills
/// a block over several batches would.
final class BufferingSink: EventSink {
    private let lock = ConditionLock()
    // Guarded by `lock`.
    private nonisolated(unsafe) var held: [BatchCompletion] = []

    func open(_ context: StageContext) throws {}
    func write(_ batch: EventBatch) throws {
        guard let completion = batch.completion else { return }
        completion.hold()
        lock.withLock { held.append(completion) }
    }
    /// What a flush does: the buffered records reached storage.
    func flush() {
        let flushed = lock.withLock {
            defer { held.removeAll() }
            return held
        }
        for completion in flushed { completion.release(written: true) }
    }
    func close() throws { flush() }
}

@Suite("batch completion")
struct BatchCompletionTests {
    let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    @Test func completesOnceEverySinkItReachedHasWrittenIt() throws {
        let log = CompletionLog()
        let fast = MemorySink(), slow = MemorySink(stalled: true)
        let plan = StageHarness.plan(sources: [("src", CompletingSource(log: log, batches: 3))],
                                     sinks: [("fast", fast, QueuePolicy()), ("slow", slow, QueuePolicy())])
        let runtime = PipelineRuntime(plan: plan, logger: logger)
        try runtime.start()
        // The fast sink has written everything; the stalled one nothing.
        let deadline = Clock.monotonicNs() + 10_000_000_000
        while fast.records.count < 30, Clock.monotonicNs() < deadline { Clock.sleep(ns: 1_000_000) }
        #expect(fast.records.count == 30)
        Clock.sleep(ns: 50_000_000)
        #expect(log.reported.isEmpty)
        slow.release()
        #expect(log.wait(for: 3))
        #expect(runtime.wait().succeeded)
        #expect(log.reported.map(\.batch) == [0, 1, 2])
        #expect(log.reported.allSatisfy { $0.written })
    }

    @Test func aBatchThatReachesNoSinkCompletesWhenEmitReturns() {
        let log = CompletionLog()
        let metrics = StageMetrics()
        let dropAll = SinkQueue(policy: QueuePolicy(), metrics: StageMetrics())
        // Every record is removed by the filter: no queue ever holds the batch.
        struct DropAll: EventFilter { func includes(_ record: PipelineRecord) -> Bool { false } }
        let output = SourceOutput(routes: [.filter(id: "none", DropAll(), StageMetrics(), [.sink(id: "out", dropAll)])], metrics: metrics)
        output.emit(EventBatch([.event(StageHarness.event())], completion: log.completion(0)))
        #expect(log.reported.count == 1)
        #expect(log.reported.first?.written == true)
        #expect(dropAll.depth == 0)
        // An empty batch completes too.
        SourceOutput(routes: [], metrics: metrics).emit(EventBatch([], completion: log.completion(1)))
        #expect(log.reported.map(\.batch) == [0, 1])
    }

    @Test func aBatchADroppingQueueDropsCompletesAsNotWritten() {
        let log = CompletionLog()
        let queue = SinkQueue(policy: QueuePolicy(capacityEvents: 1, whenFull: .drop), metrics: StageMetrics())
        let output = SourceOutput(routes: [.sink(id: "out", queue)], metrics: StageMetrics())
        output.emit(EventBatch([.event(StageHarness.event())], completion: log.completion(0)))
        output.emit(EventBatch([.event(StageHarness.event())], completion: log.completion(1)))
        // The second is dropped (the first fills the queue): done at once, not written.
        #expect(log.reported.map(\.batch) == [1])
        #expect(log.reported.first?.written == false)
        // The queue's own `lost` record for the drop comes first, then the batch.
        guard case .batch(let loss) = queue.pop(untilMonotonicNs: Clock.monotonicNs()),
              case .batch(let first) = queue.pop(untilMonotonicNs: Clock.monotonicNs()) else {
            Issue.record("the first batch should be queued")
            return
        }
        #expect(loss.completion == nil && loss.lossWeight == 1)
        #expect(log.reported.count == 1)
        // The consumer's release after the write completes the first.
        first.completion?.release(written: true)
        #expect(log.reported.map(\.batch) == [1, 0])
        #expect(log.reported.last?.written == true)
    }

    @Test func aSinkThatBuffersHoldsTheCompletionUntilItsRecordsAreStored() throws {
        let log = CompletionLog()
        let sink = BufferingSink()
        let plan = StageHarness.plan(sources: [("src", CompletingSource(log: log, batches: 2))], sinks: [("buffer", sink, QueuePolicy())])
        let runtime = PipelineRuntime(plan: plan, logger: logger)
        try runtime.start()
        // `close()` flushes: only then are the batches done.
        #expect(runtime.wait().succeeded)
        #expect(log.reported.map(\.batch) == [0, 1])
        #expect(log.reported.allSatisfy { $0.written })
    }

    @Test func aFailedSinkCompletesItsBatchesAsNotWritten() throws {
        final class FailingSink: EventSink {
            func open(_ context: StageContext) throws {}
            func write(_ batch: EventBatch) throws { throw StageStartError(stage: "?", message: "disk full") }
            func close() throws {}
        }
        let log = CompletionLog()
        let memory = MemorySink()
        let plan = StageHarness.plan(sources: [("src", CompletingSource(log: log, batches: 4))],
                                     sinks: [("bad", FailingSink(), QueuePolicy()), ("good", memory, QueuePolicy())])
        let runtime = PipelineRuntime(plan: plan, logger: logger)
        try runtime.start()
        #expect(!runtime.wait().succeeded)
        #expect(log.wait(for: 4))
        // Every batch reached the failed sink, so none counts as written.
        #expect(log.reported.count == 4)
        #expect(log.reported.allSatisfy { !$0.written })
    }
}
