import EventSinks
import Foundation
import Logging
import PipelineCore
import PipelineTesting
import Testing

@Suite("file sink")
/// A class, so that `deinit` removes the test's directory.
final class FileSinkTests {
    let directory: String

    init() throws {
        directory = NSTemporaryDirectory() + "pipelined-file-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    deinit {
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func context() -> StageContext {
        StageContext(id: "out", logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }), metrics: StageMetrics())
    }

    private func records(_ count: Int) -> [PipelineRecord] {
        (0..<count).map { .event(StageHarness.event("openat", retval: Int64($0 % 7) - 3, timeNs: 1_795_000_000_000_000_000 + Int64($0))) }
    }

    private func expectedBytes(_ records: [PipelineRecord]) -> [UInt8] {
        var bytes: [UInt8] = []
        NDJSONEncoder().encode(EventBatch(records), into: &bytes)
        return bytes
    }

    private func files() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
    }

    private func contents(_ name: String) throws -> [UInt8] {
        Array(try Data(contentsOf: URL(fileURLWithPath: directory + "/" + name)))
    }

    @Test func writesEveryRecordInOrderAndCountsBytes() throws {
        let sink = FileSink(FileSinkOptions(path: directory + "/events.jsonl"))
        let ctx = context()
        try sink.open(ctx)
        let input = records(1000)
        for start in stride(from: 0, to: 1000, by: 100) {
            try sink.write(EventBatch(Array(input[start..<start + 100])))
        }
        try sink.close()
        let expected = expectedBytes(input)
        #expect(try contents("events.jsonl") == expected)
        #expect(ctx.metrics.bytes.load(ordering: .relaxed) == UInt64(expected.count))
    }

    /// Batches bigger than the sink's 1 MiB write buffer are written in
    /// several pieces, and a record whose upper bound alone exceeds that
    /// buffer (a 200 KB path of control characters, each of which may take
    /// six bytes escaped) still goes out whole and in its place.
    @Test func largeBatchesAndAHugeRecordAreWrittenWhole() throws {
        let sink = FileSink(FileSinkOptions(path: directory + "/events.jsonl"))
        let ctx = context()
        try sink.open(ctx)
        var input = records(8000)
        let hugePath = String(repeating: "\u{01}", count: 200_000)
        input.insert(.event(StageHarness.event("unlink", args: [.string(hugePath)])), at: 4000)
        try sink.write(EventBatch(input))
        try sink.close()
        let expected = expectedBytes(input)
        #expect(expected.count > 3 << 20)
        let written = try contents("events.jsonl")
        #expect(written.count == expected.count)
        #expect(written.elementsEqual(expected), "the file differs from the encoding of the batch")
        #expect(ctx.metrics.bytes.load(ordering: .relaxed) == UInt64(expected.count))
    }

    @Test func appendsToAnExistingFileUnlessToldToTruncate() throws {
        let path = directory + "/events.jsonl"
        try Data("old\n".utf8).write(to: URL(fileURLWithPath: path))
        let appending = FileSink(FileSinkOptions(path: path))
        try appending.open(context())
        try appending.write(EventBatch(records(1)))
        try appending.close()
        #expect(try contents("events.jsonl") == Array("old\n".utf8) + expectedBytes(records(1)))

        let truncating = FileSink(FileSinkOptions(path: path, append: false))
        try truncating.open(context())
        try truncating.write(EventBatch(records(2)))
        try truncating.close()
        #expect(try contents("events.jsonl") == expectedBytes(records(2)))
    }

    @Test func rotatesBySizeWithoutSplittingARecord() throws {
        let input = records(500)
        let lineLength = expectedBytes([input[0]]).count
        let limit = 4096
        let sink = FileSink(FileSinkOptions(path: directory + "/events.jsonl", rotateBytes: limit))
        try sink.open(context())
        try sink.write(EventBatch(Array(input[0..<250])))
        try sink.write(EventBatch(Array(input[250...])))
        try sink.close()

        let names = try files()
        #expect(names.count > 2)
        #expect(names.first == "events.jsonl")
        let rotated = Array(names.dropFirst())
        var joined: [UInt8] = []
        // Rotated files sort by their UTC stamp, oldest first; the live file is newest.
        for name in rotated + ["events.jsonl"] {
            let bytes = try contents(name)
            #expect(bytes.count <= limit)
            #expect(bytes.last == UInt8(ascii: "\n"))
            if name != "events.jsonl" { #expect(bytes.count > limit - lineLength - 200) }
            joined += bytes
        }
        #expect(joined == expectedBytes(input))
        #expect(rotated.allSatisfy { $0.hasPrefix("events.jsonl.2") })
    }

    @Test func rotatesByAgeWhenIdle_butNotAnEmptyFile() throws {
        // An age far beyond how long the test takes on a slow machine: only
        // the `nowNs` the test passes makes the file old.
        let sink = FileSink(FileSinkOptions(path: directory + "/events.jsonl", rotateAgeNs: 600_000_000_000))
        try sink.open(context())
        try sink.idle(nowNs: Clock.wallNs() + 700_000_000_000)
        #expect(try files() == ["events.jsonl"])
        try sink.write(EventBatch(records(3)))
        try sink.idle(nowNs: Clock.wallNs() + 1_000_000_000)
        #expect(try files().count == 1)
        try sink.idle(nowNs: Clock.wallNs() + 700_000_000_000)
        let names = try files()
        #expect(names.count == 2)
        #expect(try contents(names[1]) == expectedBytes(records(3)))
        #expect(try contents("events.jsonl").isEmpty)
        try sink.close()
    }

    @Test func keepFilesRemovesTheOldestRotations() throws {
        let sink = FileSink(FileSinkOptions(path: directory + "/events.jsonl", rotateBytes: 4096, keepFiles: 2))
        try sink.open(context())
        try sink.write(EventBatch(records(600)))
        try sink.close()
        let names = try files()
        #expect(names.count == 3)
        #expect(names.filter { $0 != "events.jsonl" }.count == 2)
    }

    @Test func optionsAreCheckedWithLocations() {
        let config = StageHarness.config(.sink, "file", specs: FileSink.descriptor.options, [
            "path": "-", "rotate_bytes": "1KiB", "rotate_age": "soon",
        ])
        #expect(FileSinkOptions(config) == nil)
        #expect(config.diagnostics.map(\.message) == [
            "sink 't': 'rotate_bytes' must be at least 4KiB, not 1KiB",
            "sink 't': 'rotate_age' must be a duration such as 500ms, 10s, 5m or 1h, not 'soon'",
            "sink 't': 'rotate_bytes' cannot be used with path '-' (standard output does not rotate)",
            "sink 't': 'rotate_age' cannot be used with path '-' (standard output does not rotate)",
        ])
    }

    @Test func pathIsRequired() {
        let config = StageHarness.config(.sink, "file", specs: FileSink.descriptor.options, [:])
        #expect(FileSinkOptions(config) == nil)
        #expect(config.diagnostics.map(\.message) == ["sink 't': missing required option 'path'"])
    }

    @Test func anUnwritableDirectoryFailsAtOpen() {
        let sink = FileSink(FileSinkOptions(path: directory + "/missing/dir/events.jsonl"))
        #expect(throws: SystemError.self) { try sink.open(context()) }
    }
}
