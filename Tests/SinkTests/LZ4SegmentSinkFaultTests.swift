import EventArchive
import EventSinks
import Foundation
import Logging
import PipelineCore
import PipelineTesting
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A full disk under a real `lz4_segments` sink: a tmpfs of 1 MiB fed past
/// its size (docs/fault-injection.md).
extension LZ4SegmentSinkTests {
    /// Records that compress about 4:1, so that a few thousand fill a tmpfs.
    func bulky(_ count: Int, from first: Int = 0) -> [PipelineRecord] {
        var generator = SplitMix(seed: UInt64(first) &+ 7)
        return (first..<(first + count)).map { n in
            let noise = (0..<6).map { _ in String(generator.next(), radix: 36) }.joined()
            return .event(StageHarness.event(
                "openat", retval: Int64(n % 7) - 3, timeNs: 1_795_000_000_000_000_000 + Int64(n) * 1_000_000,
                pid: UInt32(1000 + n % 500), comm: String(noise.prefix(15))
            ))
        }
    }

    /// Every record of the archive, sealed segments (by the manifest) and the `.open` one's complete blocks.
    func archived(_ directory: String) throws -> [PipelineRecord] {
        let decoder = NDJSONDecoder()
        var records: [PipelineRecord] = []
        for name in try ArchiveDirectory(directory).segments() {
            // Spans of whole lines, each ending in a newline.
            _ = try SegmentReader(path: ArchiveDirectory(directory).path(of: name)).readLines { span in
                for line in Array(span).split(separator: UInt8(ascii: "\n")) {
                    records.append(try decoder.decode(Array(line)))
                }
                return true
            }
        }
        return records
    }

    /// The problem with the events of `records` being some of `input`'s, in
    /// order, each at most once (their times are distinct), or nil.
    func orderProblem(_ records: [PipelineRecord], _ input: [PipelineRecord]) -> String? {
        let known = Set(input.map(\.timeNs))
        var last = Int64.min
        for record in records {
            guard case .event = record else { continue }
            if !known.contains(record.timeNs) { return "an event that was not written: \(record.timeNs)" }
            if record.timeNs <= last { return "an event out of order or repeated: \(record.timeNs)" }
            last = record.timeNs
        }
        return nil
    }

    @Test(.enabled(if: Faults.canMount)) func aFullDiskDropsAndCounts_aHealthySinkInTheSamePipelineGetsEveryEvent() throws {
        let disk = try TmpfsMount(bytes: 1 << 20)
        let archive = disk.path + "/archive"
        let input = bulky(60_000)
        let log = CapturedLog()
        let file = directory + "/all.jsonl"
        let plan = StageHarness.plan(
            sources: [("replay", MemorySource(input, batchSize: 256))],
            sinks: [
                ("arc", LZ4SegmentSink(LZ4SegmentSinkOptions(directory: archive, segmentBytes: 64 << 10, blockSize: .kib64)), QueuePolicy()),
                ("file", FileSink(FileSinkOptions(path: file)), QueuePolicy()),
            ])
        let runtime = PipelineRuntime(plan: plan, logger: log.logger)
        try runtime.start()
        let summary = runtime.wait()

        #expect(summary.failures.isEmpty, "the pipeline went on: \(summary.failures)")
        #expect(Faults.lines(file).count == input.count, "the file sink got every event")
        let lost = summary.metrics["arc"]?.lost[.sink] ?? 0
        let kept = try archived(archive)
        #expect(lost > 0, "the disk filled up")
        #expect(UInt64(kept.count) + lost == UInt64(input.count), "every event archived or counted: \(kept.count) + \(lost)")
        #expect(orderProblem(kept, input) == nil)
        // One error when the episode starts; one more at close, which it outlasted.
        let errors = log.all.filter { $0.hasPrefix("error") && $0.contains("No space left on device") && $0.contains("dropping events") }
        #expect(errors.count == 1, "one error for the episode: \(errors)")
        #expect(log.all.filter { $0.hasPrefix("error") }.count == 2)
        #expect(log.all.contains { $0.hasPrefix("error") && $0.contains("still refuses writes at close") })
        #expect(errors.first?.contains(archive) == true && errors.first?.contains("bytes free of 1MiB") == true, "\(errors)")
        #expect(try ArchiveVerifier.verify(ArchiveDirectory(archive)).isClean, "every sealed segment is valid")
        let listed = try manifestEntries(archive).map(\.segment)
        #expect(Set(listed).count == listed.count)
    }

    @Test(.enabled(if: Faults.canMount)) func aFullDiskResumesWhenAFileIsDeleted_andALostRecordTellsWhatWasDropped() throws {
        let disk = try TmpfsMount(bytes: 1 << 20)
        try disk.fill("ballast", bytes: 512 << 10)
        let archive = disk.path + "/archive"
        let log = CapturedLog()
        let ctx = context(log)
        let sink = LZ4SegmentSink(LZ4SegmentSinkOptions(directory: archive, segmentBytes: 64 << 10, blockSize: .kib64))
        try sink.open(ctx)
        // Until the disk is full, and 4000 events more.
        var input: [PipelineRecord] = []
        var afterFull = 0
        while afterFull < 4000 {
            let batch = bulky(200, from: input.count)
            input += batch
            try sink.write(EventBatch(batch))
            if ctx.metrics.lost(at: .sink) > 0 { afterFull += batch.count }
            try #require(input.count < 200_000, "the disk never filled")
        }
        #expect(log.all.filter { $0.hasPrefix("error") }.count == 1)
        unlink(disk.path + "/ballast")
        // The next try comes after the retry interval.
        Clock.sleep(ns: 150_000_000)
        let rest = bulky(2000, from: input.count)
        input += rest
        try write(sink, rest, batch: 200)
        try sink.close()

        let dropped = ctx.metrics.lost(at: .sink)
        let records = try archived(archive)
        let lostRecords = records.compactMap { record -> LostRecord? in
            if case .lost(let lost) = record { return lost }
            return nil
        }
        #expect(lostRecords.count == 1)
        #expect(lostRecords.first?.count == dropped && lostRecords.first?.site == .sink && lostRecords.first?.stage == "arc")
        let events = records.filter { if case .event = $0 { true } else { false } }
        #expect(UInt64(events.count) + dropped == UInt64(input.count), "\(events.count) archived + \(dropped) lost")
        #expect(events.suffix(rest.count).map(\.timeNs) == rest.map(\.timeNs), "everything after the space came back is archived")
        #expect(orderProblem(records, input) == nil)
        #expect(log.all.contains { $0.hasPrefix("notice") && $0.contains("writing again") })
        #expect(try sealedSegments(archive).count == (try ArchiveDirectory(archive).segments().count), "no .open segment after close")
        #expect(try ArchiveVerifier.verify(ArchiveDirectory(archive)).isClean)
        let listed = try manifestEntries(archive).map(\.segment)
        #expect(Set(listed).count == listed.count)
    }

    @Test(.enabled(if: Faults.canMount)) func onAFullDiskRetentionRemovesTheOldestSegments_andNothingIsLost() throws {
        let disk = try TmpfsMount(bytes: 1 << 20)
        let archive = disk.path + "/archive"
        let log = CapturedLog()
        let ctx = context(log)
        // retention_bytes larger than the disk: the disk fills first.
        let sink = LZ4SegmentSink(LZ4SegmentSinkOptions(directory: archive, segmentBytes: 64 << 10, blockSize: .kib64, retentionBytes: 8 << 20))
        try sink.open(ctx)
        let input = bulky(40_000)
        try write(sink, input, batch: 200)
        try sink.close()

        #expect(ctx.metrics.lost(at: .sink) == 0)
        #expect(log.all.filter { $0.hasPrefix("error") }.isEmpty, "\(log.all.filter { $0.hasPrefix("error") })")
        #expect(log.all.contains { $0.hasPrefix("warning") && $0.contains("retention removed the oldest segment") })
        let records = try archived(archive)
        #expect(records.count > 1000 && records.count < input.count)
        #expect(records.map(\.timeNs) == input.suffix(records.count).map(\.timeNs), "the newest events, every one of them")
        #expect(try ArchiveVerifier.verify(ArchiveDirectory(archive)).isClean)
        let listed = try manifestEntries(archive).map(\.segment)
        #expect(Set(listed).count == listed.count)
        #expect(listed == (try sealedSegments(archive)))
    }

    @Test func faultInjectionCanRunWhereCIRequiresIt() {
        if Faults.required {
            #expect(Faults.canMount, "CI requires the fault tests: mount a tmpfs (root)")
            #expect(Faults.canUseFUSE, "CI requires the EIO tests: /dev/fuse and libfuse3-dev")
        }
    }
}

/// A small, seeded generator: the same "noise" on every run.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
