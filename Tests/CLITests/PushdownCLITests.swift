import Foundation
import Testing

#if canImport(Glibc)
import Glibc
@testable import TestSupport
#endif

/// Filter pushdown into the kernel (issue 13), end to end: two `pipelined
/// run`s of the same pipeline trace one connect storm at the same time, one
/// with pushdown and one with `settings.pushdown: false`. With pushdown the
/// kernel source submits only what the filters keep (its own `out` count
/// equals what reaches the sink; without, the filter drops at least the
/// storm's share), and the storm's records at the sink are the same in both
/// (the time each was built aside). Other processes of this shared machine
/// may add records to both: the counts are compared within each run.
@Suite("pushdown into the kernel", .serialized)
final class PushdownCLITests: Sendable {
    let directory: URL

    init() throws {
        directory = try CLI.temporaryDirectory("pushdown")
    }

    deinit { try? FileManager.default.removeItem(at: directory) }

    /// The storm: a child making `connects` connects, alternating a UDP one
    /// (succeeds) and a refused TCP one (-111).
    static let connects = 2000

    /// One filter kind: the source's events, the filters (their last one
    /// feeds the sink) and what the storm's worker gets through them.
    struct Case: Sendable, CustomTestStringConvertible {
        let name: String
        let events: String
        let filter: String
        /// (event, retval) of the worker's records the sink must have.
        let keeps: @Sendable (String, Int) -> Bool
        var testDescription: String { name }
    }

    static let cases: [Case] = [
        Case(name: "retval success: false", events: "[connect]", filter: "success: false", keeps: { _, retval in retval < 0 }),
        Case(name: "retval equals", events: "[connect]", filter: "equals: [-111]", keeps: { _, retval in retval == -111 }),
        Case(name: "retval not_equals", events: "[connect]", filter: "not_equals: [0]", keeps: { _, retval in retval != 0 }),
        Case(name: "retval min and max", events: "[connect]", filter: "{min: -111, max: -1}", keeps: { _, retval in (-111)...(-1) ~= retval }),
        Case(name: "retval max", events: "[connect]", filter: "max: -1", keeps: { _, retval in retval <= -1 }),
        Case(name: "retval errno", events: "[connect]", filter: "errno: [ECONNREFUSED]", keeps: { _, retval in retval == -111 }),
        Case(name: "event_id include", events: "[socket, connect]", filter: "event_id include: [connect]", keeps: { event, _ in event == "connect" }),
        Case(name: "scope scopes", events: "[openat, socket, connect]", filter: "scope scopes: [file]", keeps: { event, _ in event == "openat" }),
        Case(name: "scope origin", events: "[connect]", filter: "scope origin: container", keeps: { _, _ in false }),
    ]

    /// `success: false` as a retval filter; `event_id include: [connect]` as
    /// an event_id filter; `{min: ..}` as the retval filter's whole options.
    static func filterStage(_ text: String) -> String {
        for type in ["event_id", "scope"] where text.hasPrefix(type + " ") {
            return "{type: \(type), inputs: [kernel], \(text.dropFirst(type.count + 1))}"
        }
        if text.hasPrefix("{") { return "{type: retval, inputs: [kernel], \(text.dropFirst().dropLast())}" }
        return "{type: retval, inputs: [kernel], \(text)}"
    }

    private func write(_ name: String, _ text: String) throws -> String {
        let url = directory.appendingPathComponent(name)
        try text.write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }

    /// The worker's records of an NDJSON file, without `time` and `ktime_ns`.
    static func untimedLines(of pid: Int32, in path: String) throws -> [String] {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        return text.split(separator: "\n").filter { $0.contains("\"host_pid\":\(pid),") }.map { line in
            String(line).replacing(/"time":"[^"]*",/, with: "").replacing(/"ktime_ns":[0-9]+,/, with: "")
        }
    }

    static func eventAndRetval(_ line: String) -> (String, Int)? {
        guard let event = line.firstMatch(of: /"event":"([a-z_0-9]+)"/)?.1, let retval = line.firstMatch(of: /"retval":(-?[0-9]+)/)?.1 else { return nil }
        return (String(event), Int(retval) ?? 0)
    }

    /// Runs the two pipelines around one storm; returns each run's stderr
    /// and the worker's records.
    private func pushedAndNot(_ name: String, source: String, filters: String, sinkInput: String, extraSinks: String = "") throws
        -> (pushed: (stderr: String, lines: [String]), whole: (stderr: String, lines: [String]), worker: Int32)
    {
        func pipeline(_ label: String, pushdown: Bool) throws -> String {
            try write("\(name)-\(label).yaml", """
                settings:
                  pushdown: \(pushdown)
                sources:
                  kernel: \(source)
                filters:
                \(filters)
                sinks:
                  out: {type: file, inputs: [\(sinkInput)], path: "\(directory.path)/\(name)-\(label).jsonl"}
                \(extraSinks)
                """)
        }
        let pushed = try RunningPipeline(try pipeline("pushed", pushdown: true))
        let whole = try RunningPipeline(try pipeline("whole", pushdown: false))
        let load = try Loadgen.start(count: Self.connects, rate: 0, mode: "mixed")
        load.process.waitUntilExit()
        #expect(load.process.terminationStatus == 0)
        let (a, b) = (pushed.finish(), whole.finish())
        #expect(a.status == 0, "\(a.stderr.suffix(2000))")
        #expect(b.status == 0, "\(b.stderr.suffix(2000))")
        return ((a.stderr, try Self.untimedLines(of: load.worker, in: "\(directory.path)/\(name)-pushed.jsonl")),
                (b.stderr, try Self.untimedLines(of: load.worker, in: "\(directory.path)/\(name)-whole.jsonl")),
                load.worker)
    }

    @Test(.enabled(if: KernelGate.enabled), arguments: PushdownCLITests.cases)
    func theKernelSubmitsOnlyWhatTheOnlyPathKeeps(_ test: Case) throws {
        let name = test.name.replacing(" ", with: "-").replacing(":", with: "")
        let (pushed, whole, _) = try pushedAndNot(
            name, source: "{type: syscall_monitor, events: \(test.events)}",
            filters: "  only: \(Self.filterStage(test.filter))", sinkInput: "only")
        // The same records at the sink, with and without pushdown.
        #expect(pushed.lines == whole.lines, "\(pushed.lines.count) against \(whole.lines.count) records")
        let kept = pushed.lines.compactMap(Self.eventAndRetval)
        #expect(kept.allSatisfy { test.keeps($0.0, $0.1) })
        // What the worker made that the path keeps, exactly, and at least
        // how many of its records the path drops (its three socket() calls
        // and its connects).
        let (expected, dropped): (Int, UInt64)
        switch test.name {
        case "event_id include": (expected, dropped) = (Self.connects, 3)
        case "scope scopes": (expected, dropped) = (0, UInt64(Self.connects) + 3)
        case "scope origin": (expected, dropped) = (0, UInt64(Self.connects))
        default: (expected, dropped) = (Self.connects / 2, UInt64(Self.connects / 2))
        }
        #expect(kept.count == expected)

        // The source's own counter: with pushdown, only what the filter
        // keeps was submitted (every process's: this machine is shared, so
        // others' records come too), without, every call.
        let (kernelPushed, sinkPushed) = (stageTotals(pushed.stderr, stage: "kernel"), stageTotals(pushed.stderr, stage: "out"))
        let (kernelWhole, sinkWhole) = (stageTotals(whole.stderr, stage: "kernel"), stageTotals(whole.stderr, stage: "out"))
        // With pushdown the filter has nothing left to drop...
        #expect(kernelPushed["out"] != nil && kernelPushed["out"] == sinkPushed["in"], "kernel out \(kernelPushed) against sink in \(sinkPushed)")
        // ... without, it drops at least what the worker made that it does not keep.
        let (submittedWhole, keptWhole) = (kernelWhole["out"] ?? 0, sinkWhole["in"] ?? .max)
        #expect(submittedWhole >= keptWhole && submittedWhole - keptWhole >= dropped, "without pushdown: submitted \(submittedWhole), kept \(keptWhole)")
        #expect(pushed.stderr.contains("pushdown: source 'kernel' (syscall_monitor):"))
        #expect(!whole.stderr.contains("pushdown: source 'kernel' (syscall_monitor): the sinks keep"))
    }

    /// Two paths, one keeping everything and one the failures: nothing is
    /// pushed for retval, so the kernel submits every connect.
    @Test(.enabled(if: KernelGate.enabled))
    func aPathThatKeepsEverythingPushesNoRetvalTest() throws {
        let (pushed, whole, _) = try pushedAndNot(
            "two-paths", source: "{type: syscall_monitor, events: [connect]}",
            filters: "  failed: {type: retval, inputs: [kernel], success: false}", sinkInput: "kernel",
            extraSinks: "  failures: {type: file, inputs: [failed], path: \"\(directory.path)/two-paths-failures.jsonl\"}")
        #expect(pushed.lines == whole.lines)
        #expect(pushed.lines.count == Self.connects)
        #expect((stageTotals(pushed.stderr, stage: "kernel")["out"] ?? 0) >= UInt64(Self.connects))
        #expect(pushed.stderr.contains("retval/origin: nothing to test"), "\(pushed.stderr.suffix(3000))")
    }
}

/// A reload that changes only what the filters keep: the running kernel
/// source is reconfigured in place (its programs stay), attaches the event
/// the new filter wants, and submits what it keeps now.
@Suite("pushdown on reload", .serialized)
struct PushdownReloadCLITests {
    @Test(.enabled(if: KernelGate.enabled))
    func aReloadChangingTheFilterChangesWhatTheKernelSubmits() throws {
        let directory = try CLI.temporaryDirectory("pushdown-reload")
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("p.yaml").path
        let output = directory.appendingPathComponent("out.jsonl").path
        func write(_ filter: String) throws {
            let partial = file + ".partial"
            try """
                sources:
                  kernel: {type: syscall_monitor, events: [socket, connect]}
                filters:
                  only: {type: retval, inputs: [kernel], \(filter)}
                sinks:
                  out: {type: file, inputs: [only], path: "\(output)"}
                """.write(toFile: partial, atomically: false, encoding: .utf8)
            #expect(rename(partial, file) == 0)
        }
        try write("success: false")
        let pipeline = try RunningPipeline(file)
        let before = try Loadgen.start(count: 1000, rate: 0, mode: "mixed")
        before.process.waitUntilExit()
        // Written before the reload: a batch still on its way after it
        // would go through the new filter.
        #expect(try eventually { (try pipeline.scrape().value("pipelined_stage_events_in_total", ["stage": "out"]) ?? 0) >= 500 })
        #expect(try pipeline.scrape().value("pipelined_stage_attached_events", ["event": "connect", "capture": "exit"]) == 1)
        #expect(try pipeline.scrape().value("pipelined_stage_attached_events", ["event": "socket"]) == 1)

        try write("success: true")
        pipeline.run.signal(SIGHUP)
        #expect(pipeline.run.waitFor { _, stderr in stderr.contains("reloaded:") })
        let after = try Loadgen.start(count: 1000, rate: 0, mode: "mixed")
        after.process.waitUntilExit()
        let result = pipeline.finish()
        #expect(result.status == 0, "\(result.stderr.suffix(2000))")
        #expect(result.stderr.contains("reloaded: unchanged 1, reconfigured [kernel], replaced [only]"), "\(result.stderr.suffix(3000))")
        #expect(result.stderr.contains("tracing 2 event(s)"))
        #expect(!result.stderr.contains("tracing 2 event(s)", after: "reloaded:"), "the kernel program was loaded again")

        let lines = try String(contentsOfFile: output, encoding: .utf8).split(separator: "\n")
        let of = { (pid: Int32) in lines.filter { $0.contains("\"host_pid\":\(pid),") } }
        // Before: the refused connects only; after: the successful ones and socket().
        #expect(of(before.worker).count == 500 && of(before.worker).allSatisfy { $0.contains("\"retval\":-111,") })
        let later = of(after.worker)
        #expect(later.filter { $0.contains("\"event\":\"connect\"") }.count == 500)
        #expect(later.contains { $0.contains("\"event\":\"socket\"") })
        #expect(!later.contains { $0.contains("\"retval\":-") })
        // The kernel never submits less than the filter keeps. (Not equal:
        // another process's syscall that the kernel submitted under the old
        // condition just before the reload meets the new filter, which drops
        // it; the filters decide, as pushdown promises.)
        let submitted = stageTotals(result.stderr, stage: "kernel")["out"] ?? 0
        let kept = stageTotals(result.stderr, stage: "out")["in"] ?? 0
        #expect(submitted >= kept && kept >= 1_000)
    }
}

extension String {
    /// Whether `needle` occurs after the first `marker`.
    func contains(_ needle: String, after marker: String) -> Bool {
        guard let start = range(of: marker) else { return false }
        return self[start.upperBound...].contains(needle)
    }
}

/// pipelined's own syscalls are never traced (issue 13, part 3): its file
/// sink's writes and rotations and its socket sink's clients make no event,
/// while other processes' do.
@Suite("pipelined's own syscalls", .serialized)
struct OwnProcessCLITests {
    @Test(.enabled(if: KernelGate.enabled), arguments: ["auto", "entry"])
    func theDaemonsFilesAndSocketsMakeNoEvents(capture: String) throws {
        let directory = try CLI.temporaryDirectory("own")
        defer { try? FileManager.default.removeItem(at: directory) }
        let socketPath = "/tmp/pl-own-\(UUID().uuidString.prefix(8)).sock"
        defer { unlink(socketPath) }
        let file = directory.appendingPathComponent("p.yaml").path
        try """
            sources:
              kernel: {type: syscall_monitor, events: [openat, close, socket, connect, accept, bind, listen], capture: \(capture)}
            sinks:
              log: {type: file, inputs: [kernel], path: "\(directory.path)/all.jsonl", rotate_bytes: 64KiB}
              live: {type: unix_socket, inputs: [kernel], path: "\(socketPath)", mode: "0666"}
            """.write(toFile: file, atomically: true, encoding: .utf8)
        let pipeline = try RunningPipeline(file)
        let daemon = pipeline.run.pid
        let client = try CLI.start(["tail", socketPath])
        #expect(try eventually { (try pipeline.scrape().value("pipelined_stage_clients_connected", ["stage": "live"]) ?? 0) == 1 })
        let load = try Loadgen.start(count: 2000, rate: 0, mode: "mixed")
        load.process.waitUntilExit()
        let result = pipeline.finish()
        let tail = client.finish()
        #expect(result.status == 0, "\(result.stderr.suffix(2000))")
        #expect(result.stderr.contains(capture == "entry" ? "entry+exit capture" : "exit-only capture"))

        let names = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasPrefix("all.jsonl") }
        #expect(names.count > 2, "the file sink did not rotate: \(names)")
        var lines: [Substring] = []
        for name in names {
            lines += try String(contentsOfFile: directory.appendingPathComponent(name).path, encoding: .utf8).split(separator: "\n")
        }
        let of = { (pid: Int32) in lines.filter { $0.contains("\"host_pid\":\(pid),") } }
        #expect(of(daemon).isEmpty, "pipelined's own syscalls were traced: \(of(daemon).prefix(3))")
        #expect(of(load.worker).filter { $0.contains("\"event\":\"connect\"") }.count == 2000)
        // The client is another process: its connect to the socket is an event.
        #expect(of(client.pid).contains { $0.contains("\"event\":\"connect\"") && $0.contains(socketPath) })
        #expect(!tail.stdout.contains("\"host_pid\":\(daemon),"))
    }
}
