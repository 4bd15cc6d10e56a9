import Atomics
#if canImport(Glibc)
import Glibc
#endif
import Logging
import PipelineCore
import PipelineTesting
import Testing

/// A source that pushes numbered events until stopped, like a live kernel source.
final class EndlessSource: EventSource {
    let pushed = ManagedAtomic<Int>(0)
    private let stopped = ManagedAtomic<Bool>(false)
    func prepare(_ context: StageContext) throws {}
    func run(_ output: SourceOutput) throws {
        var sequence: Int64 = 0
        while !stopped.load(ordering: .relaxed) {
            var records: [PipelineRecord] = []
            for _ in 0..<64 {
                sequence += 1
                records.append(.event(StageHarness.event(timeNs: sequence)))
            }
            output.emit(EventBatch(records))
            pushed.wrappingIncrement(by: records.count, ordering: .relaxed)
        }
    }
    func stop() { stopped.store(true, ordering: .relaxed) }
}

struct KeepFailures: EventFilter {
    func includes(_ record: PipelineRecord) -> Bool {
        if case .event(let event) = record { return event.retval < 0 }
        return true
    }
}

@Suite("runtime")
struct RuntimeTests {
    let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    private func events(_ count: Int, from start: Int = 0, retval: (Int) -> Int64 = { _ in 0 }) -> [PipelineRecord] {
        (start..<start + count).map { .event(StageHarness.event(retval: retval($0), timeNs: Int64($0))) }
    }

    private func times(_ records: [PipelineRecord]) -> [Int64] {
        records.compactMap { record in
            if case .event(let event) = record { return event.timeNs }
            return nil
        }
    }

    @Test func fanOutDeliversACopyToEachBranch() throws {
        let input = events(1000)
        let a = MemorySink(), b = MemorySink()
        let plan = StageHarness.plan(sources: [("src", MemorySource(input))], sinks: [("a", a, QueuePolicy()), ("b", b, QueuePolicy())])
        let runtime = PipelineRuntime(plan: plan, logger: logger)
        try runtime.start()
        let summary = runtime.wait()
        #expect(summary.succeeded)
        #expect(a.records == input)
        #expect(b.records == input)
        #expect(a.closed && b.closed)
        #expect(summary.metrics["a"]?.recordsIn == 1000)
    }

    @Test func fanInMergesEverySource() throws {
        let first = events(300), second = events(500, from: 10_000)
        let sink = MemorySink()
        let plan = StageHarness.plan(sources: [("one", MemorySource(first)), ("two", MemorySource(second))], sinks: [("out", sink, QueuePolicy())])
        let runtime = PipelineRuntime(plan: plan, logger: logger)
        try runtime.start()
        #expect(runtime.wait().succeeded)
        #expect(sink.records.count == 800)
        // Each source's records keep their order.
        let received = times(sink.records)
        #expect(received.filter { $0 < 10_000 } == times(first))
        #expect(received.filter { $0 >= 10_000 } == times(second))
    }

    @Test func filtersRunBetweenSourceAndSink_andCountWhatPassed() throws {
        let input = events(100) { $0 % 4 == 0 ? -111 : 0 }
        let sink = MemorySink(), all = MemorySink()
        let plan = PipelinePlan(name: "t", stages: [
            PlannedStage(id: "src", type: "memory", instance: .source(MemorySource(input, batchSize: 7))),
            PlannedStage(id: "failed", type: "retval", instance: .filter(KeepFailures()), inputs: ["src"]),
            PlannedStage(id: "out", type: "memory", instance: .sink(sink), inputs: ["failed"]),
            PlannedStage(id: "all", type: "memory", instance: .sink(all), inputs: ["src"]),
        ])
        let runtime = PipelineRuntime(plan: plan, logger: logger)
        try runtime.start()
        let summary = runtime.wait()
        #expect(sink.records == input.filter { KeepFailures().includes($0) })
        #expect(sink.records.count == 25)
        #expect(all.records == input)
        #expect(summary.metrics["failed"]?.recordsIn == 100)
        #expect(summary.metrics["failed"]?.recordsOut == 25)
    }

    @Test func stopWhileEventsFlowLosesNothingAlreadyRead() throws {
        let source = EndlessSource()
        let sink = MemorySink()
        let plan = StageHarness.plan(sources: [("live", source)], sinks: [("out", sink, QueuePolicy(capacityEvents: 4096, whenFull: .block))])
        let runtime = PipelineRuntime(plan: plan, logger: logger)
        try runtime.start()
        while source.pushed.load(ordering: .relaxed) < 50_000 { Clock.sleep(ns: 1_000_000) }
        runtime.stop()
        let summary = runtime.wait()
        #expect(summary.succeeded)
        let pushed = source.pushed.load(ordering: .relaxed)
        #expect(pushed >= 50_000)
        #expect(sink.accounted.events == pushed)
        #expect(sink.accounted.lost == 0)
        #expect(sink.closed)
    }

    @Test func aStalledSinkSetToDropCountsExactlyWhatItDropped() throws {
        let input = events(10_000)
        let source = MemorySource(input, batchSize: 100)
        let stalled = MemorySink(stalled: true)
        let healthy = MemorySink()
        let plan = StageHarness.plan(
            sources: [("src", source)],
            sinks: [("slow", stalled, QueuePolicy(capacityEvents: 1000, whenFull: .drop)), ("fast", healthy, QueuePolicy())]
        )
        let runtime = PipelineRuntime(plan: plan, logger: logger)
        try runtime.start()
        // The source finishes although one sink is stalled: it never blocks.
        while source.pushed.load(ordering: .relaxed) < input.count { Clock.sleep(ns: 1_000_000) }
        stalled.release()
        let summary = runtime.wait()
        #expect(summary.succeeded)
        #expect(healthy.records == input)
        let (events, lost) = stalled.accounted
        #expect(events + Int(lost) == input.count)
        #expect(lost > 0)
        #expect(summary.metrics["slow"]?.lostTotal == lost)
        let lostRecords = stalled.records.compactMap { record -> LostRecord? in
            if case .lost(let lost) = record { return lost }
            return nil
        }
        #expect(!lostRecords.isEmpty)
        #expect(lostRecords.allSatisfy { $0.site == .queue && $0.cpu == nil })
        // What was delivered is in order, with the dropped ones missing.
        let delivered = times(stalled.records)
        #expect(delivered == delivered.sorted())
    }

    @Test func aStalledSinkSetToBlockHoldsTheSourceBackAndLosesNothing() throws {
        let input = events(5_000)
        let source = MemorySource(input, batchSize: 100)
        let stalled = MemorySink(stalled: true)
        let plan = StageHarness.plan(sources: [("src", source)], sinks: [("slow", stalled, QueuePolicy(capacityEvents: 500, whenFull: .block))])
        let runtime = PipelineRuntime(plan: plan, logger: logger)
        try runtime.start()
        Clock.sleep(ns: 100_000_000)
        // Queue (500) plus the batch the stalled write holds: the source is held back.
        #expect(source.pushed.load(ordering: .relaxed) < input.count)
        stalled.release()
        #expect(runtime.wait().succeeded)
        #expect(stalled.records == input)
    }

    @Test func aSinkThatFailsToOpenStopsTheStartAndClosesWhatOpened() throws {
        final class Broken: EventSink {
            func open(_ context: StageContext) throws { throw StageStartError(stage: "?", message: "no disk", exitCode: 1) }
            func write(_ batch: EventBatch) throws {}
            func close() throws {}
        }
        let good = MemorySink()
        let plan = StageHarness.plan(sources: [("src", MemorySource(events(10)))], sinks: [("good", good, QueuePolicy()), ("broken", Broken(), QueuePolicy())])
        let runtime = PipelineRuntime(plan: plan, logger: logger)
        #expect {
            try runtime.start()
        } throws: { error in
            (error as? StageStartError)?.stage == "broken" && (error as? StageStartError)?.message == "no disk"
        }
        #expect(good.closed)
    }

    /// A sink whose write fails mid-stream counts everything it could not
    /// write, the losses its batches carried included (the same weight a
    /// full queue counts), so that written + counted = generated.
    @Test func aSinkThatFailsMidStreamCountsEverythingItCouldNotWrite() throws {
        final class FailsOnThirdWrite: EventSink {
            let lock = ConditionLock()
            // Guarded by `lock`.
            nonisolated(unsafe) var writes = 0
            nonisolated(unsafe) var written: UInt64 = 0
            func open(_ context: StageContext) throws {}
            func write(_ batch: EventBatch) throws {
                try lock.withLock {
                    writes += 1
                    if writes >= 3 { throw SinkFailure() }
                    written += batch.lossWeight
                }
            }
            func close() throws {}
            struct SinkFailure: Error {}
        }
        // Every batch of 100 carries a kernel loss of 7 besides its events.
        var input: [PipelineRecord] = []
        for batch in 0..<50 {
            input += events(99, from: batch * 99)
            input.append(.lost(LostRecord(timeNs: 1, count: 7, site: .kernel, cpu: 0)))
        }
        let source = MemorySource(input, batchSize: 100)
        let failing = FailsOnThirdWrite()
        let plan = StageHarness.plan(sources: [("src", source)], sinks: [("out", failing, QueuePolicy(capacityEvents: 100_000, whenFull: .block))])
        let runtime = PipelineRuntime(plan: plan, logger: logger)
        try runtime.start()
        let summary = runtime.wait()
        #expect(!summary.succeeded)
        #expect(summary.failures.contains { $0.hasPrefix("out: write failed") })
        let pushed = source.pushed.load(ordering: .relaxed)
        let generated = EventBatch(Array(input.prefix(pushed))).lossWeight
        let written = failing.lock.withLock { failing.written }
        #expect(written == 2 * 106)
        #expect(generated > written)
        #expect(written + (summary.metrics["out"]?.lostTotal ?? 0) == generated)
    }

    /// A batch pushed after the queue closed is lost like any dropped batch:
    /// the stage's counter and the `lost` record the consumer gets agree.
    @Test func aPushAfterCloseIsCountedAsTheLostRecordSays() {
        let metrics = StageMetrics()
        let queue = SinkQueue(policy: QueuePolicy(), metrics: metrics)
        queue.close()
        queue.push(EventBatch(events(5) + [.lost(LostRecord(timeNs: 1, count: 3, site: .kernel, cpu: 0))]))
        guard case .batch(let batch) = queue.pop(untilMonotonicNs: Clock.monotonicNs()) else {
            Issue.record("no lost record after a push into a closed queue")
            return
        }
        #expect(batch.records == [.lost(LostRecord(timeNs: batch.records.first?.timeNs ?? 0, count: 8, site: .queue))])
        #expect(metrics.lost(at: .queue) == 8)
        #expect(metrics.lostTotal == 8)
        guard case .finished = queue.pop(untilMonotonicNs: Clock.monotonicNs()) else {
            Issue.record("the closed, drained queue did not finish")
            return
        }
    }

    /// `settings.priority_boost`: the stage threads run at the starting
    /// thread's nice value minus the boost when the process may raise its
    /// priority (root, or CAP_SYS_NICE), and unchanged otherwise; 0 leaves
    /// them alone.
    @Test(arguments: [3, 0])
    func stageThreadsTakeThePriorityBoost(boost: Int) throws {
        final class NiceProbe: EventSink {
            let seen = ManagedAtomic<Int>(Int.min)
            func open(_ context: StageContext) throws {}
            func write(_ batch: EventBatch) throws {
                errno = 0
                let nice = getpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0)
                if errno == 0 { seen.store(Int(nice), ordering: .relaxed) }
            }
            func close() throws {}
        }
        let probe = NiceProbe()
        var settings = PipelineSettings()
        settings.priorityBoost = boost
        let plan = StageHarness.plan(sources: [("src", MemorySource(events(10)))], sinks: [("probe", probe, QueuePolicy())], settings: settings)
        errno = 0
        let starting = Int(getpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0))
        let runtime = PipelineRuntime(plan: plan, logger: logger)
        try runtime.start()
        #expect(runtime.wait().succeeded)
        // CAP_SYS_NICE (bit 23) in the effective set, which root has.
        let status = String(decoding: try FileIO.readAll("/proc/self/status"), as: UTF8.self)
        let capabilities = status.split(separator: "\n").first { $0.hasPrefix("CapEff:") }
            .flatMap { UInt64($0.dropFirst("CapEff:".count).trimmingPrefix(while: \.isWhitespace), radix: 16) } ?? 0
        let mayRaise = capabilities & (1 << 23) != 0
        let expected = boost > 0 && mayRaise ? max(-20, starting - boost) : starting
        #expect(probe.seen.load(ordering: .relaxed) == expected, "starting nice \(starting), CapEff \(String(capabilities, radix: 16))")
    }
}
