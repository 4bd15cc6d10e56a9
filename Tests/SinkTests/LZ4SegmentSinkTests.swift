import EventArchive
import EventSinks
import Foundation
import Logging
import PipelineCore
import PipelineTesting
import Testing

@Suite("lz4_segments sink")
/// A class, so that `deinit` removes the test's directory.
final class LZ4SegmentSinkTests {
    let directory: String

    init() throws {
        directory = "/tmp/pipelined-lz4-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    deinit {
        try? FileManager.default.removeItem(atPath: directory)
    }

    func context(_ log: CapturedLog = CapturedLog(), id: String = "arc") -> StageContext {
        StageContext(id: id, logger: log.logger, metrics: StageMetrics())
    }

    /// Events with distinct times (1 ms apart from `startNs`) and varied fields.
    func records(_ count: Int, from first: Int = 0, startNs: Int64 = 1_795_000_000_000_000_000) -> [PipelineRecord] {
        let names = ["openat", "connect", "execve", "unlink", "socket"]
        return (first..<(first + count)).map { n in
            .event(StageHarness.event(
                names[n % names.count], retval: Int64(n % 7) - 3, timeNs: startNs + Int64(n) * 1_000_000,
                pid: UInt32(1000 + n % 500), comm: "proc\(n % 37)"
            ))
        }
    }

    func encoded(_ records: [PipelineRecord]) -> [UInt8] {
        var bytes: [UInt8] = []
        NDJSONEncoder().encode(EventBatch(records), into: &bytes)
        return bytes
    }

    func files() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
    }

    func sealedSegments(_ path: String? = nil) throws -> [String] {
        try ArchiveDirectory(path ?? directory).segments().filter { !$0.isOpen }.map(\.sealedFileName)
    }

    func lz4Decompress(_ name: String) throws -> [UInt8] {
        try lz4Decompress(directory, name)
    }

    func lz4Decompress(_ directory: String, _ name: String) throws -> [UInt8] {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["lz4", "-dc", directory + "/" + name]
        let out = Pipe()
        process.standardOutput = out
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "lz4 -dc \(name)")
        return Array(data)
    }

    func manifestEntries(_ path: String? = nil) throws -> [ManifestEntry] {
        let contents = try ArchiveManifest(directory: ArchiveDirectory(path ?? directory)).read()
        #expect(contents.problems.isEmpty)
        return contents.entries
    }

    func write(_ sink: LZ4SegmentSink, _ records: [PipelineRecord], batch: Int) throws {
        for start in stride(from: 0, to: records.count, by: batch) {
            try sink.write(EventBatch(Array(records[start..<min(records.count, start + batch)])))
        }
    }

    // MARK: Content

    @Test func everySealedSegmentHoldsExactlyWhatTheSinkReceived() throws {
        let ctx = context()
        let sink = LZ4SegmentSink(LZ4SegmentSinkOptions(directory: directory, segmentBytes: 32 << 10, blockSize: .kib64))
        try sink.open(ctx)
        var input = records(10_000)
        input.insert(.lost(LostRecord(timeNs: 1_795_000_005_000_000_000, count: 17, site: .queue)), at: 5_000)
        try write(sink, input, batch: 250)
        try sink.close()

        let sealed = try sealedSegments()
        #expect(sealed.count > 3)
        #expect(try files() == (sealed + [ArchiveDirectory.manifestName]).sorted(), "no .open segment after close")
        var joined: [UInt8] = []
        let entries = try manifestEntries()
        #expect(entries.map(\.segment) == sealed)
        var total = 0
        for (name, entry) in zip(sealed, entries) {
            let content = try lz4Decompress(name)
            #expect(content.last == UInt8(ascii: "\n"))
            let lines = content.split(separator: UInt8(ascii: "\n"))
            #expect(entry.events == lines.count)
            #expect(entry.bytes == FileIO.fileSize(directory + "/" + name))
            #expect(Array(lines[0]).withUnsafeBytes { ArchiveTime.ofRecord($0) } == entry.firstTimeNs)
            #expect(Array(lines[lines.count - 1]).withUnsafeBytes { ArchiveTime.ofRecord($0) } == entry.lastTimeNs)
            #expect(name.hasPrefix("arc-\(UTCDateTime(epochNs: entry.firstTimeNs).compact)-"))
            joined += content
            total += entry.bytes
        }
        #expect(joined == encoded(input))
        #expect(entries.reduce(0) { $0 + $1.events } == input.count)
        #expect(SegmentName(fileName: sealed[0])?.sequence == 1)
        #expect(sealed.compactMap { SegmentName(fileName: $0)?.sequence } == Array(1...sealed.count))
        #expect(ctx.metrics.bytes.load(ordering: .relaxed) == UInt64(total))
        #expect(try ArchiveVerifier.verify(ArchiveDirectory(directory)).isClean)
    }

    /// A batch counts as written (its completion released) only once its
    /// records are in a block on disk, which a crash keeps: not while they
    /// wait in the block being filled.
    @Test func aBatchCompletesOnceItsRecordsAreInAWrittenBlock() throws {
        let sink = LZ4SegmentSink(LZ4SegmentSinkOptions(directory: directory, blockSize: .kib64, flushIntervalNs: 3_600_000_000_000))
        try sink.open(context())
        final class Done: @unchecked Sendable {
            // Only touched under `lock`.
            let lock = ConditionLock()
            var count = 0
            func load() -> Int { lock.withLock { count } }
        }
        let done = Done()
        func batch(_ records: [PipelineRecord]) -> EventBatch {
            EventBatch(records, completion: BatchCompletion { written in if written { done.lock.withLock { done.count += 1 } } })
        }
        // The runtime's own hold is released after write; the sink's remains.
        let small = batch(records(10))
        try sink.write(small)
        small.completion?.release(written: true)
        #expect(done.load() == 0)
        // Enough to fill the 64 KiB block: the first batch is in it, the second partly.
        let large = batch(records(400, from: 10))
        try sink.write(large)
        large.completion?.release(written: true)
        #expect(done.load() == 1)
        // Idle writes the partial block: the rest is stored.
        try sink.idle(nowNs: Clock.wallNs())
        #expect(done.load() == 2)
        let last = batch(records(5, from: 410))
        try sink.write(last)
        last.completion?.release(written: true)
        try sink.close()
        #expect(done.load() == 3)
    }

    @Test func rotatesBySize() throws {
        let limit = 16 << 10
        let sink = LZ4SegmentSink(LZ4SegmentSinkOptions(directory: directory, segmentBytes: limit, blockSize: .kib64))
        try sink.open(context())
        let input = records(20_000)
        try write(sink, input, batch: 100)
        try sink.close()
        let entries = try manifestEntries()
        #expect(entries.count >= 5)
        for entry in entries.dropLast() {
            // Sealed once the file reached the limit, and not long after.
            #expect(entry.bytes >= limit, "\(entry.segment)")
            #expect(entry.bytes < limit + 64 << 10, "\(entry.segment)")
        }
        #expect(entries.last!.bytes <= entries.dropLast().map(\.bytes).max()!)
        #expect(entries.reduce(0) { $0 + $1.events } == input.count)
    }

    @Test func rotatesByAgeWhenIdle_andFlushesABlockOnIdle() throws {
        let sink = LZ4SegmentSink(LZ4SegmentSinkOptions(directory: directory, segmentAgeNs: 600_000_000_000, blockSize: .mib4))
        // The age is far beyond how long the test takes on a slow machine: only
        // the `nowNs` the test passes makes the segment old.
        try sink.open(context())
        let start = Clock.wallNs()
        try sink.idle(nowNs: start + 700_000_000_000)
        #expect(try files().isEmpty, "an idle sink with no records starts no segment")

        try sink.write(EventBatch(records(30)))
        let open = try #require(try ArchiveDirectory(directory).segments().first)
        #expect(open.isOpen && open.sequence == 1)
        // A 4MiB block is far from full: nothing readable until the idle flush.
        #expect(try SegmentReader.summarize(path: ArchiveDirectory(directory).path(of: open)).records == 0)
        try sink.idle(nowNs: Clock.wallNs())
        let flushed = try SegmentReader.summarize(path: ArchiveDirectory(directory).path(of: open))
        #expect(flushed.records == 30 && flushed.read.ending == .truncated)
        #expect(try sealedSegments().isEmpty)

        try sink.idle(nowNs: Clock.wallNs() + 601_000_000_000)
        #expect(try sealedSegments() == [open.sealedFileName])
        #expect(try ArchiveDirectory(directory).segments().allSatisfy { !$0.isOpen })
        #expect(try manifestEntries().map(\.events) == [30])

        try sink.write(EventBatch(records(5, from: 30)))
        try sink.close()
        let sealed = try sealedSegments()
        #expect(sealed.compactMap { SegmentName(fileName: $0)?.sequence } == [1, 2])
        #expect(try lz4Decompress(sealed[0]) + lz4Decompress(sealed[1]) == encoded(records(35)))
    }

    // MARK: Retention

    @Test func retentionByBytesRemovesTheOldestSegments() throws {
        let sink = LZ4SegmentSink(LZ4SegmentSinkOptions(directory: directory, segmentBytes: 8 << 10, blockSize: .kib64, retentionBytes: 40 << 10))
        let log = CapturedLog()
        try sink.open(context(log))
        let input = records(30_000)
        try write(sink, input, batch: 100)
        try sink.close()
        let entries = try manifestEntries()
        let sealed = try sealedSegments()
        #expect(entries.map(\.segment) == sealed, "the manifest lists exactly the files left")
        let sizes = sealed.map { FileIO.fileSize(directory + "/" + $0)! }
        #expect(sizes.reduce(0, +) <= 40 << 10)
        #expect(sizes.reduce(0, +) > 40 << 10 - 2 * sizes.max()!)
        // The newest survive: together they are the input's tail.
        let first = try #require(SegmentName(fileName: sealed[0]))
        #expect(first.sequence > 1)
        #expect(sealed.compactMap { SegmentName(fileName: $0)?.sequence } == Array(first.sequence..<(first.sequence + sealed.count)))
        var joined: [UInt8] = []
        for name in sealed { joined += try lz4Decompress(name) }
        let all = encoded(input)
        #expect(Array(all.suffix(joined.count)) == joined)
        #expect(log.all.contains { $0.contains("retention removed") })
        #expect(try ArchiveVerifier.verify(ArchiveDirectory(directory)).isClean)
    }

    @Test func retentionByAgeRemovesSegmentsWhoseEventsAreOld() throws {
        let hour: Int64 = 3_600_000_000_000
        let now = Clock.wallNs()
        let options = LZ4SegmentSinkOptions(directory: directory, segmentAgeNs: 1_000_000_000, blockSize: .kib64, retentionAgeNs: hour)
        let sink = LZ4SegmentSink(options)
        try sink.open(context())
        // Old events: sealed, then removed at once by the seal's retention pass.
        try sink.write(EventBatch(records(50, startNs: now - 3 * hour)))
        try sink.idle(nowNs: Clock.wallNs() + 2_000_000_000)
        #expect(try sealedSegments().isEmpty)
        #expect(try manifestEntries().isEmpty)
        // Recent events stay until they are an hour old.
        try sink.write(EventBatch(records(50, from: 50, startNs: now)))
        try sink.idle(nowNs: Clock.wallNs() + 2_000_000_000)
        let kept = try sealedSegments()
        #expect(kept.count == 1)
        #expect(SegmentName(fileName: kept[0])?.sequence == 2)
        try sink.idle(nowNs: now + hour / 2)
        #expect(try sealedSegments() == kept)
        try sink.idle(nowNs: now + 2 * hour)
        #expect(try sealedSegments().isEmpty)
        #expect(try manifestEntries().isEmpty)
        try sink.close()
        #expect(try ArchiveVerifier.verify(ArchiveDirectory(directory)).isClean)
    }

    // MARK: Crash recovery

    @Test func openSalvagesWhatACrashLeftAndContinuesTheSequence() throws {
        // A writer that never closes: what it left on disk is what a crash leaves.
        let crashedDirectory = directory + "/crashed"
        let crashed = LZ4SegmentSink(LZ4SegmentSinkOptions(directory: crashedDirectory, blockSize: .kib64))
        try crashed.open(context())
        let before = records(3_000)
        try write(crashed, before, batch: 200)
        try crashed.idle(nowNs: Clock.wallNs())
        let open = try #require(try ArchiveDirectory(crashedDirectory).segments().first)
        #expect(open.isOpen)
        // The crashed writer still holds its directory: restart on a copy, with
        // a block cut short at the end of the file as a crash mid-write leaves it.
        let archive = directory + "/archive"
        try FileManager.default.createDirectory(atPath: archive, withIntermediateDirectories: false)
        try FileManager.default.copyItem(atPath: ArchiveDirectory(crashedDirectory).path(of: open), toPath: ArchiveDirectory(archive).path(of: open))
        let options = LZ4SegmentSinkOptions(directory: archive, blockSize: .kib64)
        let handle = try #require(FileHandle(forWritingAtPath: ArchiveDirectory(archive).path(of: open)))
        handle.seekToEndOfFile()
        handle.write(Data([0x88, 0x13, 0x00, 0x00] + Array(repeating: UInt8(7), count: 100)))
        handle.closeFile()

        let log = CapturedLog()
        let restarted = LZ4SegmentSink(options)
        try restarted.open(context(log))
        let salvaged = try sealedSegments(archive)
        #expect(salvaged == [open.sealedFileName])
        #expect(try lz4Decompress(archive, open.sealedFileName) == encoded(before))
        #expect(try manifestEntries(archive).map(\.events) == [3_000])
        #expect(log.all.contains { $0.contains("salvaged \(open.openFileName): kept 3000 record(s)") && $0.contains("dropped 104 compressed byte(s)") }, "\(log.all)")

        let after = records(10, from: 3_000)
        try restarted.write(EventBatch(after))
        try restarted.close()
        let sealed = try sealedSegments(archive)
        #expect(sealed.count == 2)
        #expect(SegmentName(fileName: sealed[1])?.sequence == 2)
        #expect(try lz4Decompress(archive, sealed[1]) == encoded(after))
        #expect(try ArchiveVerifier.verify(ArchiveDirectory(archive)).isClean)
    }

    @Test func aSecondWriterOnTheSameDirectoryIsRefused() throws {
        let first = LZ4SegmentSink(LZ4SegmentSinkOptions(directory: directory))
        try first.open(context())
        try first.write(EventBatch(records(10)))
        try first.idle(nowNs: Clock.wallNs())
        let second = LZ4SegmentSink(LZ4SegmentSinkOptions(directory: directory))
        #expect(throws: ArchiveError.self) { try second.open(context(id: "other")) }
        // The refused writer salvaged nothing: the first one's segment is still open.
        #expect(try ArchiveDirectory(directory).segments().map(\.isOpen) == [true])
        try first.close()
        let third = LZ4SegmentSink(LZ4SegmentSinkOptions(directory: directory))
        try third.open(context())
        try third.close()
        #expect(try manifestEntries().map(\.events) == [10])
    }

    @Test func aDirectoryThatCannotBeCreatedFailsAtOpen() throws {
        #expect(FileManager.default.createFile(atPath: directory + "/file", contents: Data()))
        let sink = LZ4SegmentSink(LZ4SegmentSinkOptions(directory: directory + "/file/archive"))
        #expect(throws: ArchiveError.self) { try sink.open(context()) }
    }

    // MARK: Options

    @Test func optionsHaveTheDocumentedDefaults() throws {
        let config = StageHarness.config(.sink, "lz4_segments", specs: LZ4SegmentSink.descriptor.options, ["directory": "/var/lib/a"])
        let options = try #require(LZ4SegmentSinkOptions(config))
        #expect(options == LZ4SegmentSinkOptions(directory: "/var/lib/a"))
        #expect(options.segmentBytes == 64 << 20 && options.segmentAgeNs == 600_000_000_000 && options.blockSize == .mib1)
        #expect(options.retentionBytes == nil && options.retentionAgeNs == nil)

        let full = StageHarness.config(.sink, "lz4_segments", specs: LZ4SegmentSink.descriptor.options, [
            "directory": "/a", "segment_bytes": "8MiB", "segment_age": "30s", "block_size": "256KiB",
            "retention_bytes": "1GiB", "retention_age": "7d", "flush_interval": "250ms",
        ])
        #expect(LZ4SegmentSinkOptions(full) == LZ4SegmentSinkOptions(
            directory: "/a", segmentBytes: 8 << 20, segmentAgeNs: 30_000_000_000, blockSize: .kib256,
            retentionBytes: 1 << 30, retentionAgeNs: 7 * 86_400_000_000_000, flushIntervalNs: 250_000_000
        ))
    }

    @Test func badOptionsAreReportedWithTheirKeys() {
        let config = StageHarness.config(.sink, "lz4_segments", specs: LZ4SegmentSink.descriptor.options, [
            "segment_bytes": "4MiB", "block_size": "128KiB", "retention_bytes": "1MiB", "segment_age": "10ms",
        ])
        #expect(LZ4SegmentSinkOptions(config) == nil)
        #expect(config.diagnostics.map(\.message) == [
            "sink 't': missing required option 'directory'",
            "sink 't': 'segment_age' must be at least 1s, not 10ms",
            "sink 't': 'block_size' must be one of 64KiB, 256KiB, 1MiB, 4MiB, not 128KiB",
            "sink 't': 'retention_bytes' must be at least segment_bytes (4MiB), not 1MiB",
        ])
    }
}
