import Logging
import PipelineCore
import PipelineTesting
import Testing

@Suite("stage metrics")
struct MetricsTests {
    @Test func lossesAreCountedPerSiteAndInTotal() {
        let metrics = StageMetrics()
        let queue = metrics.loss(.queue)
        queue.add(3)
        metrics.addLost(2, at: .sink)
        metrics.addLost(4, at: LossSite("client"))
        metrics.addLost(0, at: .kernel)
        #expect(metrics.lostTotal == 9)
        #expect(metrics.lost(at: .queue) == 3)
        #expect(metrics.lost(at: .sink) == 2)
        #expect(metrics.lost(at: LossSite("client")) == 4)
        // Adding nothing declares nothing.
        #expect(metrics.lost(at: .kernel) == 0)
        #expect(metrics.loss(.queue) === queue)
        #expect(metrics.snapshot.lost == [.queue: 3, .sink: 2, LossSite("client"): 4])
        let lost = metrics.series.filter { $0.name == "lost" }
        #expect(lost.map(\.labels) == [["where": "queue"], ["where": "sink"], ["where": "client"]])
        #expect(lost.map(\.value) == [3, 2, 4])
        #expect(lost.allSatisfy { $0.kind == .counter })
    }

    @Test func aStageDeclaresItsOwnSeries() {
        let metrics = StageMetrics()
        let dropped = metrics.counter("clients_dropped", help: "clients dropped")
        dropped.add()
        dropped.add(2)
        #expect(metrics.counter("clients_dropped", help: "clients dropped") === dropped)
        let level = metrics.gauge("clients_connected", help: "clients now")
        level.add(5)
        level.add(-2)
        metrics.observe(.counter, "clients_refused", help: "clients refused") { 7 }
        #expect(metrics.value(of: "clients_dropped") == 3)
        #expect(metrics.value(of: "clients_connected") == 3)
        #expect(metrics.value(of: "clients_refused") == 7)
        #expect(metrics.value(of: "absent") == nil)

        let own = metrics.snapshot.declared
        #expect(own.map(\.name) == ["clients_dropped", "clients_connected", "clients_refused"])
        #expect(own.map(\.kind) == [.counter, .gauge, .counter])
        #expect(own.map(\.help) == ["clients dropped", "clients now", "clients refused"])
        // The common counters come first, whatever the stage declares.
        #expect(metrics.series.map(\.name) == ["records_in", "records_out", "malformed", "bytes", "clients_dropped", "clients_connected", "clients_refused"])
    }

    @Test func theRuntimeLabelsEverySeriesWithItsStage() {
        let source = MemorySource([])
        let plan = StageHarness.plan(sources: [("in", source)], sinks: [("out", MemorySink(), QueuePolicy())])
        let runtime = PipelineRuntime(plan: plan, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        runtime.metrics["in"]?.add(runtime.metrics["in"]!.recordsIn, 4)
        let series = runtime.series
        #expect(series.first { $0.name == "records_in" && $0.labels["stage"] == "in" }?.value == 4)
        #expect(series.allSatisfy { $0.labels["stage"] != nil && $0.labels["type"] == "memory" })
        // A sink's queue losses are a series from the start.
        #expect(series.contains { $0.name == "lost" && $0.labels == ["stage": "out", "type": "memory", "where": "queue"] })
    }

    @Test func lossSitesAreWords() {
        #expect(LossSite(rawValue: "client")?.rawValue == "client")
        #expect(LossSite(rawValue: "broker_down") != nil)
        #expect(LossSite(rawValue: "") == nil)
        #expect(LossSite(rawValue: "Queue") == nil)
        #expect(LossSite(rawValue: "a\"b") == nil)
        #expect(LossSite(rawValue: String(repeating: "a", count: LossSite.maxLength + 1)) == nil)
    }

    @Test func anyLossSiteWordRoundTripsThroughNDJSON() throws {
        let record = PipelineRecord.lost(LostRecord(timeNs: 5, count: 9, site: LossSite("broker_down")))
        var line: [UInt8] = []
        NDJSONEncoder().encode(record, into: &line)
        #expect(String(decoding: line, as: UTF8.self).contains(#""where":"broker_down","cpu":null"#))
        #expect(try NDJSONDecoder().decode(Array(line.dropLast())) == record)
        #expect(throws: NDJSONError.self) {
            try NDJSONDecoder().decode(#"{"time":"2026-11-24T16:34:13Z","event":"lost","count":1,"where":"Nope"}"#)
        }
    }
}
