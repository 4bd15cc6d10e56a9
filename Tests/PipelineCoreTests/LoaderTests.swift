import PipelineCore
import Testing

/// A registry of small real stages, so that the loader's rules are tested
/// apart from any one built-in stage type.
private enum TestStages {
    final class NullSource: EventSource {
        func prepare(_ context: StageContext) throws {}
        func run(_ output: SourceOutput) throws {}
        func stop() {}
    }
    final class NullSink: EventSink {
        func open(_ context: StageContext) throws {}
        func write(_ batch: EventBatch) throws {}
        func close() throws {}
    }
    struct PassFilter: EventFilter {
        func includes(_ record: PipelineRecord) -> Bool { true }
    }

    static let registry = StageRegistry([
        StageDescriptor.source(
            type: "gen", summary: "test source",
            options: [OptionSpec("count", "int", required: true, "events"), OptionSpec("label", "string", "a label")],
            make: { config in
                config.require("count")
                _ = config.int("count", in: 1...1000)
                _ = config.string("label")
                return config.diagnostics.isEmpty ? NullSource() : nil
            }),
        StageDescriptor.filter(
            type: "pass", summary: "test filter", options: [],
            make: { _ in PassFilter() }),
        StageDescriptor.sink(
            type: "out", summary: "test sink",
            options: [OptionSpec("path", "string", required: true, "where"), OptionSpec("limit", "size", "bytes")],
            make: { config in
                config.require("path")
                _ = config.string("path")
                _ = config.size("limit", in: 4096...Int.max)
                return config.diagnostics.isEmpty ? NullSink() : nil
            }),
    ])

    static func load(_ text: String, environment: [String: String] = [:]) throws(PipelineFileError) -> PipelinePlan {
        try PipelineLoader(registry: registry, environment: environment).load(text: text, file: "p.yaml")
    }

    /// The diagnostics of a file that must fail, as printed.
    static func errors(_ text: String, environment: [String: String] = [:]) -> [String] {
        do {
            _ = try load(text, environment: environment)
            Issue.record("the file loaded, but it should have failed")
            return []
        } catch {
            return error.diagnostics.map(\.description)
        }
    }
}

@Suite("pipeline loader")
struct LoaderTests {
    let valid = """
        name: demo
        settings:
          batch_events: 128
          drain_timeout: 5s
          priority_boost: 0
          node: web-1
          pushdown: false
        sources:
          a:
            type: gen
            count: 10
        filters:
          f:
            type: pass
            inputs: [a]
        sinks:
          s1:
            type: out
            inputs: [f]
            path: /tmp/x
            queue_events: 1024
            queue_full: drop
          s2:
            type: out
            inputs: [a, f]
            path: /tmp/y
            limit: 64KiB
        """

    @Test func validFileBuildsThePlan() throws {
        let plan = try TestStages.load(valid)
        #expect(plan.name == "demo")
        #expect(plan.settings.batchEvents == 128)
        #expect(plan.settings.drainTimeoutNs == 5_000_000_000)
        #expect(plan.settings.priorityBoost == 0)
        #expect(PipelineSettings().priorityBoost == 4)
        #expect(plan.settings.nodeID.name == "web-1")
        #expect(plan.settings.pushdown == false)
        #expect(PipelineSettings().nodeID == .host)
        #expect(plan.stages.map(\.id) == ["a", "f", "s1", "s2"])
        #expect(plan.stage("s2")?.inputs == ["a", "f"])
        #expect(plan.stage("s1")?.queue == QueuePolicy(capacityEvents: 1024, whenFull: .drop))
        #expect(plan.stage("s2")?.queue == QueuePolicy())
        #expect(QueuePolicy() == QueuePolicy(capacityEvents: 8192, whenFull: .block))
    }

    @Test func unknownKeyWithSuggestion() {
        let errors = TestStages.errors("""
            sources:
              a: {type: gen, count: 1}
            sinks:
              log:
                type: out
                inputs: [a]
                path: /x
                limt: 4096
            """)
        #expect(errors == ["p.yaml:8:5: error: sink 'log': unknown key 'limt' (did you mean 'limit'?)"])
    }

    @Test func unknownTopLevelKey() {
        let errors = TestStages.errors("""
            sources:
              a: {type: gen, count: 1}
            sink:
              log: {type: out, inputs: [a], path: /x}
            """)
        #expect(errors.contains("p.yaml:3:1: error: unknown top-level key 'sink' (did you mean 'sinks'?)"))
        #expect(errors.contains { $0.contains("error: the pipeline has no sink") })
    }

    @Test func unknownTypeAndWrongKind() {
        let errors = TestStages.errors("""
            sources:
              a: {type: gem, count: 1}
              b: {type: out, path: /x}
            sinks:
              log: {type: out, inputs: [a, b], path: /x}
            """)
        #expect(errors.contains("p.yaml:2:13: error: source 'a': unknown type 'gem' (did you mean 'gen'?)"))
        #expect(errors.contains("p.yaml:3:13: error: source 'b': 'out' is a sink type; move it under 'sinks' or use a source type (gen)"))
    }

    @Test func missingTypeAndMissingRequiredOption() {
        let errors = TestStages.errors("""
            sources:
              a:
                count: 1
            sinks:
              log:
                type: out
                inputs: [a]
            """)
        #expect(errors.contains("p.yaml:2:3: error: source 'a': missing required key 'type' (source types: gen)"))
        #expect(errors.contains("p.yaml:5:3: error: sink 'log': missing required option 'path'"))
    }

    @Test func wrongValueTypeAndRange() {
        let errors = TestStages.errors("""
            sources:
              a: {type: gen, count: many}
              b: {type: gen, count: 5000}
            sinks:
              log: {type: out, inputs: [a, b], path: [x], limit: 12}
            """)
        #expect(errors == [
            "p.yaml:2:25: error: source 'a': 'count' must be an integer, not 'many'",
            "p.yaml:3:25: error: source 'b': 'count' must be between 1 and 1000, not 5000",
            "p.yaml:5:42: error: sink 'log': 'path' must be a string, not a list",
            "p.yaml:5:54: error: sink 'log': 'limit' must be at least 4KiB, not 12",
        ])
    }

    @Test func danglingInputAndSinkAsInput() {
        let errors = TestStages.errors("""
            sources:
              kernel: {type: gen, count: 1}
            sinks:
              log: {type: out, inputs: [kernal], path: /x}
              copy: {type: out, inputs: [log, kernel], path: /y}
            """)
        #expect(errors == [
            "p.yaml:4:29: error: sink 'log': input 'kernal' does not exist (did you mean 'kernel'?)",
            "p.yaml:5:30: error: sink 'copy': input 'log' is a sink; sinks produce nothing to read",
        ])
    }

    @Test func cycleIsReportedOnce() {
        let errors = TestStages.errors("""
            sources:
              a: {type: gen, count: 1}
            filters:
              f1: {type: pass, inputs: [a, f3]}
              f2: {type: pass, inputs: [f1]}
              f3: {type: pass, inputs: [f2]}
            sinks:
              log: {type: out, inputs: [f3], path: /x}
            """)
        #expect(errors == ["p.yaml:4:3: error: filter 'f1': its inputs form a cycle: f1 -> f3 -> f2 -> f1"])
    }

    @Test func sinkWithoutInputsAndUnreadSource() {
        let errors = TestStages.errors("""
            sources:
              a: {type: gen, count: 1}
              idle: {type: gen, count: 1}
            sinks:
              log: {type: out, inputs: [a], path: /x}
              orphan: {type: out, path: /y}
            """)
        #expect(errors == [
            "p.yaml:3:3: error: source 'idle': nothing reads it; list it under 'inputs' of a filter or sink",
            "p.yaml:6:3: error: sink 'orphan': no inputs; list the sources or filters it reads under 'inputs'",
        ])
    }

    @Test func noSourceNoSink() {
        let errors = TestStages.errors("""
            name: empty
            sources: {}
            """)
        #expect(errors.contains("p.yaml:2:10: error: the pipeline has no source: add one under 'sources'"))
        #expect(errors.contains("p.yaml:1:1: error: the pipeline has no sink: add one under 'sinks'"))
    }

    @Test func environmentSubstitution() throws {
        let text = """
            name: ${NAME:-fallback}
            sources:
              a: {type: gen, count: "${COUNT}", label: "$$literal ${EMPTY:-dflt}"}
            sinks:
              log: {type: out, inputs: [a], path: "${DIR}/events.jsonl"}
            """
        let plan = try TestStages.load(text, environment: ["COUNT": "7", "DIR": "/var/log", "EMPTY": ""])
        #expect(plan.name == "fallback")
        let errors = TestStages.errors(text, environment: ["COUNT": "7"])
        #expect(errors == ["p.yaml:5:39: error: environment variable 'DIR' is not set and has no default (write ${DIR:-default})"])
    }

    @Test func sizesAndDurations() {
        #expect(Units.parseSize("64MiB") == 64 << 20)
        #expect(Units.parseSize("512KiB") == 512 << 10)
        #expect(Units.parseSize("4096") == 4096)
        #expect(Units.parseSize("12 apples") == nil)
        #expect(Units.parseDurationNs("500ms") == 500_000_000)
        #expect(Units.parseDurationNs("10s") == 10_000_000_000)
        #expect(Units.parseDurationNs("5m") == 300_000_000_000)
        #expect(Units.parseDurationNs("1h") == 3_600_000_000_000)
        #expect(Units.parseDurationNs("soon") == nil)
        let errors = TestStages.errors("""
            settings: {drain_timeout: forever, batch_events: 0, log_lvl: info, priority_boost: -1, node: "", pushdown: maybe}
            sources:
              a: {type: gen, count: 1}
            sinks:
              log: {type: out, inputs: [a], path: /x}
            """)
        #expect(errors == [
            "p.yaml:1:27: error: settings: 'drain_timeout' must be a duration of at least 1ms such as 500ms or 30s, not 'forever'",
            "p.yaml:1:50: error: settings: 'batch_events' must be an integer between 1 and 65536, not '0'",
            "p.yaml:1:53: error: settings: unknown key 'log_lvl' (did you mean 'log_level'?)",
            "p.yaml:1:84: error: settings: 'priority_boost' must be an integer between 0 and 20, not '-1'",
            "p.yaml:1:94: error: settings: 'node' must be a non-empty name without control characters, not ''",
            "p.yaml:1:108: error: settings: 'pushdown' must be true or false, not 'maybe'",
        ])
    }

    @Test func yamlSyntaxErrorHasItsPosition() {
        let errors = TestStages.errors("sources:\n  a: {type: gen, count: 1\nsinks: []\n")
        #expect(errors.count == 1)
        #expect(errors.first?.hasPrefix("p.yaml:3:") == true)
        #expect(errors.first?.contains("error: invalid YAML") == true)
    }

    /// A control character libyaml's reader rejects is placed on its line
    /// with CRLF line ends too (once line 1, column 106: found by fuzz/pipeline_loader).
    @Test func yamlReaderErrorPositionWithCRLF() {
        let errors = TestStages.errors("sources:\r\n  a:\r\n    type: gen\r\n    count: \u{1B}1\r\n")
        #expect(errors.count == 1)
        #expect(errors.first?.hasPrefix("p.yaml:4:12: error: invalid YAML: control characters are not allowed") == true, "\(errors)")
    }

    /// An error at the end of a file without a final newline is placed at
    /// the end of its last line, not on a line past it (libyaml's end mark;
    /// found by fuzz/pipeline_loader).
    @Test func yamlErrorAtTheEndOfAFileWithoutNewline() {
        let errors = TestStages.errors("sources: {a: b")
        #expect(errors.count == 1)
        #expect(errors.first?.hasPrefix("p.yaml:1:15: error: invalid YAML") == true, "\(errors)")
        // An empty document's node sits there too.
        #expect(TestStages.errors("---") == ["p.yaml:1:4: error: a pipeline file must be a map with 'sources' and 'sinks', not a scalar"])
    }

    /// Duplicate keys give one message at one position, load after load,
    /// even with a key that is not a string among them (Yams's own order of
    /// them is none then; found by fuzz/pipeline_loader).
    @Test func duplicateKeysAreReportedTheSameEveryTime() {
        let text = "sources: {[k]: 1, [k]: 2, p: 1, q: 1, p: 2, q: 2}\n"
        let results = Set((0..<50).map { _ in TestStages.errors(text) })
        #expect(results == [["p.yaml:1:1: error: duplicate key 'p', 'q' and a key that is not a string in one map"]])
        #expect(TestStages.errors("sources: {q: 1, p: 1, q: 2, p: 2}\n") == ["p.yaml:1:17: error: duplicate key 'p', 'q' in one map"])
    }

    @Test func duplicateIdsAcrossSections() {
        let errors = TestStages.errors("""
            sources:
              a: {type: gen, count: 1}
            sinks:
              a: {type: out, inputs: [a], path: /x}
            """)
        #expect(errors == ["p.yaml:4:3: error: sink 'a': the id is already used by the source at line 2"])
    }

    @Test func everyProblemOfAFileAtOnce() {
        let errors = TestStages.errors("""
            sources:
              a: {type: gen, count: -1}
            filters:
              f: {type: pas, inputs: [a]}
            sinks:
              log: {type: out, inputs: [f, zz], path: /x, extra: 1}
            """)
        #expect(errors.count == 4)
        #expect(errors.map { $0.split(separator: ":").prefix(3).joined(separator: ":") } == ["p.yaml:2:25", "p.yaml:4:13", "p.yaml:6:32", "p.yaml:6:47"])
    }
}
