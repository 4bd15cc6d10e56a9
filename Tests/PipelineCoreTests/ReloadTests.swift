import Logging
import PipelineCore
import PipelineTesting
import Testing

/// `PipelineRuntime.apply(_:)`: a new plan replaces only what changed, and
/// every batch goes wholly by the old routes or wholly by the new.
@Suite("runtime reload")
struct ReloadTests {
    let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
    let nowhere = SourceLocation(file: "", line: 0, column: 0)

    /// A stage with options as a pipeline file would give them.
    private func stage(_ id: String, _ instance: StageInstance, inputs: [String] = [], option: String = "1") -> PlannedStage {
        let options = ConfigValue.mapping([ConfigEntry(key: "option", keyLocation: nowhere, value: .scalar(option, quoted: false, at: nowhere))], at: nowhere)
        return PlannedStage(id: id, type: "memory", instance: instance, inputs: inputs, options: options)
    }

    private func times(_ records: [PipelineRecord]) -> [Int64] {
        records.compactMap { record in
            if case .event(let event) = record { return event.timeNs }
            return nil
        }
    }

    @Test func addsRemovesAndKeeps_andTheKeptSinkSeesEveryBatchOnce() throws {
        let source = EndlessSource()
        let kept = MemorySink(), removed = MemorySink(), added = MemorySink()
        let first = PipelinePlan(name: "p", stages: [
            stage("src", .source(source)), stage("kept", .sink(kept), inputs: ["src"]), stage("old", .sink(removed), inputs: ["src"]),
        ])
        let runtime = PipelineRuntime(plan: first, logger: logger)
        try runtime.start()
        while source.pushed.load(ordering: .relaxed) < 10_000 {}
        // A fresh instance with the same options: the running one stays.
        let second = PipelinePlan(name: "p", stages: [
            stage("src", .source(EndlessSource())), stage("kept", .sink(MemorySink()), inputs: ["src"]), stage("new", .sink(added), inputs: ["src"]),
        ])
        let report = try runtime.apply(second)
        #expect(report.unchanged == ["src", "kept"])
        #expect(report.added == ["new"])
        #expect(report.removed == ["old"])
        #expect(report.replaced.isEmpty)
        #expect(removed.closed, "the removed sink was not closed")
        let atReload = source.pushed.load(ordering: .relaxed)
        while source.pushed.load(ordering: .relaxed) < atReload + 10_000 {}
        runtime.stop()
        #expect(runtime.wait().succeeded)

        let all = times(kept.records)
        #expect(all == Array(1...Int64(all.count)), "a gap or a duplicate in the sink that stayed")
        #expect(times(removed.records) + times(added.records) == all, "the new sink does not start where the old one ended")
        #expect(!added.records.isEmpty)
    }

    @Test func changedOptionsReplaceTheStage_andItKeepsItsCounters() throws {
        let source = EndlessSource()
        let before = MemorySink(), after = MemorySink()
        let runtime = PipelineRuntime(plan: PipelinePlan(name: "p", stages: [
            stage("src", .source(source)), stage("out", .sink(before), inputs: ["src"]),
        ]), logger: logger)
        try runtime.start()
        while source.pushed.load(ordering: .relaxed) < 5_000 {}
        let counters = try #require(runtime.metrics["out"])
        let report = try runtime.apply(PipelinePlan(name: "p", stages: [
            stage("src", .source(EndlessSource())), stage("out", .sink(after), inputs: ["src"], option: "2"),
        ]))
        #expect(report.replaced == ["out"])
        #expect(before.closed)
        #expect(runtime.metrics["out"] === counters)
        runtime.stop()
        let summary = runtime.wait()
        #expect(summary.succeeded)
        let written = times(before.records) + times(after.records)
        #expect(written == Array(1...Int64(written.count)))
        #expect(summary.metrics["out"]?.recordsIn == UInt64(written.count))
    }

    @Test func aPlanThatCannotStartLeavesTheRunningOneAlone() throws {
        final class Refusing: EventSink {
            func open(_ context: StageContext) throws { throw StageStartError(stage: "bad", message: "no") }
            func write(_ batch: EventBatch) throws {}
            func close() throws {}
        }
        let source = EndlessSource()
        let sink = MemorySink()
        let runtime = PipelineRuntime(plan: PipelinePlan(name: "p", stages: [
            stage("src", .source(source)), stage("out", .sink(sink), inputs: ["src"]),
        ]), logger: logger)
        try runtime.start()
        #expect(throws: StageStartError.self) {
            try runtime.apply(PipelinePlan(name: "p", stages: [
                stage("src", .source(EndlessSource())), stage("out", .sink(MemorySink()), inputs: ["src"]),
                stage("bad", .sink(Refusing()), inputs: ["src"]),
            ]))
        }
        #expect(runtime.plan.stages.map(\.id) == ["src", "out"])
        while source.pushed.load(ordering: .relaxed) < 1_000 {}
        runtime.stop()
        #expect(runtime.wait().succeeded)
        let all = times(sink.records)
        #expect(!all.isEmpty && all == Array(1...Int64(all.count)))
    }
}
