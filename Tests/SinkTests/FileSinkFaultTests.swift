import Atomics
import EventSinks
import Foundation
import Logging
import PipelineCore
import PipelineTesting
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A source that emits its phases one after the other, calling `between`
/// after each (to change a fault once the sinks have written what came before).
private final class PhasedSource: EventSource {
    private let phases: [[PipelineRecord]]
    private let between: @Sendable (Int) -> Void

    init(_ phases: [[PipelineRecord]], between: @escaping @Sendable (Int) -> Void) {
        self.phases = phases
        self.between = between
    }

    func prepare(_ context: StageContext) throws {}

    func run(_ output: SourceOutput) throws {
        for (index, phase) in phases.enumerated() {
            for start in stride(from: 0, to: phase.count, by: 100) {
                output.emit(EventBatch(Array(phase[start..<min(phase.count, start + 100)])))
            }
            between(index)
        }
    }

    func stop() {}
}

/// A file sink on a disk that fails with EIO (a FUSE file system that
/// answers EIO on demand: docs/fault-injection.md).
@Suite("file sink on a failing disk")
struct FileSinkFaultTests {
    private func records(_ count: Int, from first: Int) -> [PipelineRecord] {
        (first..<(first + count)).map { .event(StageHarness.event("openat", retval: 0, timeNs: 1_795_000_000_000_000_000 + Int64($0))) }
    }

    private func encoded(_ records: [PipelineRecord]) -> String {
        var bytes: [UInt8] = []
        NDJSONEncoder().encode(EventBatch(records), into: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Waits (generously) until `condition` holds.
    private static func eventually(_ condition: () -> Bool) {
        let deadline = Clock.monotonicNs() + 30_000_000_000
        while !condition(), Clock.monotonicNs() < deadline { Clock.sleep(ns: 2_000_000) }
    }

    @Test(.enabled(if: Faults.canUseFUSE)) func eioIsOneError_countedLoss_theOtherSinkUnaffected_andTheFileResumes() throws {
        let disk = try FaultFS()
        defer { disk.unmount() }
        let before = records(3000, from: 0), during = records(2000, from: 3000), after = records(1000, from: 5000)
        let log = CapturedLog()
        let other = MemorySink()
        let runtime = Box<PipelineRuntime>()
        let source = PhasedSource([before, during, after]) { [disk] phase in
            let metrics = runtime.value!.metrics["log"]!
            let handled = UInt64([before, during, after].prefix(phase + 1).reduce(0) { $0 + $1.count })
            // The sink has written (or dropped) everything of this phase.
            Self.eventually { metrics.recordsIn.load(ordering: .relaxed) >= handled }
            switch phase {
            case 0: disk.failing = true
            case 1:
                disk.failing = false
                // Past the retry interval: the next write reopens the file.
                Clock.sleep(ns: 150_000_000)
            default: break
            }
        }
        let plan = StageHarness.plan(
            sources: [("replay", source)],
            sinks: [
                ("log", FileSink(FileSinkOptions(path: disk.mountPoint + "/events.jsonl")), QueuePolicy()),
                ("other", other, QueuePolicy()),
            ])
        runtime.value = PipelineRuntime(plan: plan, logger: log.logger)
        try runtime.value!.start()
        let summary = runtime.value!.wait()
        // The source's closure holds the box, which holds the runtime: let go.
        defer { runtime.value = nil }

        #expect(summary.failures.isEmpty, "the pipeline went on: \(summary.failures)")
        #expect(other.records.count == 6000, "the other sink got every event")
        #expect(summary.metrics["log"]?.lost[.sink] == 2000)
        let errors = log.all.filter { $0.hasPrefix("error") }
        #expect(errors.count == 1, "one error for the episode: \(errors)")
        #expect(errors.first?.contains("Input/output error") == true && errors.first?.contains("events.jsonl") == true, "\(errors)")
        #expect(log.all.contains { $0.hasPrefix("notice") && $0.contains("writing again") })

        // What reached the disk: the events before, a lost record for the 2000, the events after.
        let lines = Faults.lines(disk.backingPath("events.jsonl"))
        try #require(lines.count == 3000 + 1 + 1000)
        #expect(lines[0..<3000].joined(separator: "\n") + "\n" == encoded(before))
        #expect(lines[3001...].joined(separator: "\n") + "\n" == encoded(after))
        let lost = try NDJSONDecoder().decode(lines[3000])
        guard case .lost(let record) = lost else {
            Issue.record("not a lost record: \(lines[3000])")
            return
        }
        #expect(record.count == 2000 && record.site == .sink && record.stage == "log")
    }
}

/// A value set after the closure that reads it is made.
private final class Box<Value>: @unchecked Sendable {
    // `@unchecked Sendable`: set once before the runtime starts, only read after.
    var value: Value?
}
