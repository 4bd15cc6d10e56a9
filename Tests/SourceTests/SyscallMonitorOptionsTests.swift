import PipelineCore
import PipelineTesting
import Testing
@testable import EventSources

/// The `syscall_monitor` options as a pipeline file gives them: defaults,
/// every option read, and every mistake reported where it is.
@Suite("syscall_monitor options")
struct SyscallMonitorOptionsTests {
    /// A source-only registry plus a sink that accepts anything.
    private static let registry = StageRegistry([
        SyscallMonitorSource.descriptor,
        StageDescriptor.sink(
            type: "out", summary: "test sink", options: [],
            make: { _ in MemorySink() }),
    ])

    /// The pipeline text around one source's option lines (indented by 4).
    private static func pipeline(_ options: [String]) -> String {
        """
        sources:
          kernel:
            type: syscall_monitor
        \(options.map { "    " + $0 }.joined(separator: "\n"))
        sinks:
          out: {type: out, inputs: [kernel]}
        """
    }

    private static func load(_ options: [String]) throws(PipelineFileError) -> SyscallMonitorOptions? {
        let plan = try PipelineLoader(registry: registry, environment: [:]).load(text: pipeline(options), file: "p.yaml")
        guard case .source(let source as SyscallMonitorSource) = plan.stage("kernel")?.instance else { return nil }
        return source.options
    }

    private static func errors(_ options: [String]) -> [String] {
        do {
            _ = try load(options)
            Issue.record("the file loaded, but it should have failed")
            return []
        } catch {
            return error.diagnostics.map(\.description)
        }
    }

    @Test func defaultsTraceEverythingThroughTheBestTransport() throws {
        let options = try #require(try Self.load([]))
        #expect(options.events == EventCatalog.all)
        #expect(options.attach == .auto)
        #expect(options.capture == .auto)
        #expect(options.transport == .auto)
        #expect(options.bufferPages == 1024)
        #expect(options.ringbufBytes == 8 << 20)
        #expect(options.skipRetvals == [-2, -115])
        #expect(Scope.allCases.allSatisfy { options.isVisible($0) })
        #expect(options.flushIntervalNs == 100_000_000)
    }

    @Test func everyOptionIsRead() throws {
        let options = try #require(try Self.load([
            "events: [connect, 257, execve, connect]",
            "attach: tracepoint",
            "capture: entry",
            "transport: ringbuf",
            "ringbuf_bytes: 16MiB",
            "skip_retvals: [-2, -11]",
            "visibility: {network: false, file: on}",
            "flush_interval: 20ms",
        ]))
        #expect(options.events.map(\.name) == ["connect", "execve", "openat"])
        #expect(options.attach == .tracepoint)
        #expect(options.capture == .entry)
        #expect(try Self.load(["capture: exit"])?.capture == .exit)
        #expect(options.transport == .ringbuf)
        #expect(options.ringbufBytes == 16 << 20)
        #expect(options.skipRetvals == [-2, -11])
        #expect(!options.isVisible(.network) && options.isVisible(.file) && options.isVisible(.process))
        #expect(options.flushIntervalNs == 20_000_000)

        let perf = try #require(try Self.load(["transport: perf", "buffer_pages: 64"]))
        #expect(perf.transport == .perf && perf.bufferPages == 64)
        // With `auto` both sizes may be given: the transport in use takes its own.
        let both = try #require(try Self.load(["buffer_pages: 256", "ringbuf_bytes: 1MiB"]))
        #expect(both.transport == .auto && both.bufferPages == 256 && both.ringbufBytes == 1 << 20)
    }

    @Test func mistakesAreReportedWhereTheyAre() {
        #expect(Self.errors(["events: [conect]"]) == [
            "p.yaml:4:14: error: source 'kernel': 'events': unknown event 'conect' (did you mean 'connect'?)",
        ])
        #expect(Self.errors(["events: []"]) == [
            "p.yaml:4:13: error: source 'kernel': 'events' must name at least one event",
        ])
        #expect(Self.errors(["capture: exits"]).first?.hasPrefix("p.yaml:4:14: error: source 'kernel': 'capture' must be one of auto, exit, entry") == true)
        #expect(Self.errors(["transport: ring"]).first?.hasPrefix("p.yaml:4:16: error: source 'kernel': 'transport' must be one of auto, perf, ringbuf") == true)
        #expect(Self.errors(["buffer_pages: 100"]) == [
            "p.yaml:4:19: error: source 'kernel': 'buffer_pages' must be a power of two, not 100",
        ])
        #expect(Self.errors(["ringbuf_bytes: 3MiB"]) == [
            "p.yaml:4:20: error: source 'kernel': 'ringbuf_bytes' must be a power of two, not 3145728",
        ])
        #expect(Self.errors(["transport: perf", "ringbuf_bytes: 1MiB"]) == [
            "p.yaml:5:20: error: source 'kernel': 'ringbuf_bytes' applies to transport ringbuf; use 'buffer_pages' with transport perf",
        ])
        #expect(Self.errors(["transport: ringbuf", "buffer_pages: 8"]) == [
            "p.yaml:5:19: error: source 'kernel': 'buffer_pages' applies to transport perf; use 'ringbuf_bytes' with transport ringbuf",
        ])
        #expect(Self.errors(["skip_retvals: [1, 2, 3, 4, 5, 6, 7, 8, 9]"]) == [
            "p.yaml:4:19: error: source 'kernel': 'skip_retvals' lists 9 values; the kernel program skips at most 8",
        ])
        #expect(Self.errors(["visibility: {netwrk: false, file: maybe}"]) == [
            "p.yaml:4:18: error: source 'kernel': 'visibility': unknown scope 'netwrk' (did you mean 'network'?)",
            "p.yaml:4:39: error: source 'kernel': 'visibility.file' must be true or false, not 'maybe'",
        ])
    }
}
