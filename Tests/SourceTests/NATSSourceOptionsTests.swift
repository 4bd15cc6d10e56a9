import EventSources
import PipelineCore
import PipelineTesting
import Testing

/// The `nats` source's options, without a server (the fleet tests run it
/// against real ones).
@Suite("nats source options")
struct NATSSourceOptionsTests {
    private func config(_ options: KeyValuePairs<String, Any>) -> StageConfig {
        StageHarness.config(.source, "nats", specs: NATSSource.descriptor.options, options)
    }

    @Test func defaults() throws {
        let options = try #require(NATSSourceOptions(config(["durable": "agg"])))
        #expect(options.durable == "agg" && options.stream == "PIPELINED" && options.subjects.isEmpty)
        #expect(options.deliver == .all && options.batch == 512)
        #expect(options.ackWaitNs == 30_000_000_000 && options.maxAckPending == 8192)
        #expect(options.endpoint.urls == ["nats://127.0.0.1:4222"])
        #expect(NATSSourceOptions(config(["durable": "agg", "subjects": ["pipelined.web-1.>"], "deliver": "new"]))?.subjects == ["pipelined.web-1.>"])
    }

    @Test func everyProblemIsReported() {
        let missing = config([:])
        #expect(NATSSourceOptions(missing) == nil)
        #expect(missing.diagnostics.map(\.message) == ["source 't': missing required option 'durable'"])
        let bad = config([
            "durable": "a b", "subjects": ["pipelined.>", "pipelined.web-1.>"], "deliver": "old",
            "batch": 1000, "max_ack_pending": 10, "ack_wait": "10ms",
        ])
        #expect(NATSSourceOptions(bad) == nil)
        #expect(bad.diagnostics.map(\.message) == [
            "source 't': 'durable' must not contain 'space' (a JetStream name is one plain word such as PIPELINED)",
            "source 't': 'subjects' item 'pipelined.web-1.>' overlaps 'pipelined.>': an event on a subject both match would be delivered twice; list subjects that do not overlap",
            "source 't': 'deliver' must be one of all, new, not 'old'",
            "source 't': 'ack_wait' must be at least 1s, not 10ms",
            "source 't': 'max_ack_pending' must be at least batch (1000)",
        ])
    }
}
