import EventArchive
import Foundation
import Logging
import PipelineCore
import Testing

/// Runs a command and returns its exit status and standard output.
func runTool(_ arguments: [String]) throws -> (status: Int32, stdout: Data) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    let out = Pipe()
    process.standardOutput = out
    process.standardError = FileHandle.nullDevice
    try process.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, data)
}

/// A scratch directory for one test, removed by the caller.
func scratchDirectory(_ label: String) throws -> String {
    let path = "/tmp/pipelined-\(label)-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// NDJSON lines with a time each, and varied enough not to compress to nothing.
func numberedLines(_ range: Range<Int>, baseNs: Int64 = 1_795_000_000_000_000_000) -> [String] {
    range.map { n in
        "{\"time\":\"\(ArchiveTime.format(baseNs + Int64(n) * 1_000_003))\",\"n\":\(n),\"pad\":\"\(String(repeating: String(n * 7919 % 97, radix: 36), count: n % 13 + 1))\"}\n"
    }
}

func bytes(_ path: String) throws -> [UInt8] { Array(try Data(contentsOf: URL(fileURLWithPath: path))) }

let quietLogger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

/// Writes a segment from `groups` of lines, one block per group (flushed), and
/// returns the file offsets where each block ends.
@discardableResult
func writeSegment(_ path: String, groups: [[String]], blockSize: LZ4BlockSize = .kib64, finish: Bool = true) throws -> [Int] {
    let fd = try FileIO.open(path, O_WRONLY | O_CREAT | O_TRUNC)
    defer { close(fd) }
    let writer = try LZ4FrameWriter(fd: fd, path: path, blockSize: blockSize)
    var ends: [Int] = []
    for group in groups {
        try writer.append(Array(group.joined().utf8))
        try writer.flush()
        ends.append(writer.bytesWritten)
    }
    if finish { try writer.finish() }
    return ends
}

@Suite("archive: names, times, manifest")
struct ArchiveFormatTests {
    @Test func segmentNamesRoundTripAndSortBySequence() throws {
        let name = SegmentName(sinkID: "my-archive", firstTimeNs: 1_795_000_000_123_000_000, sequence: 42)
        #expect(name.openFileName == "my-archive-20261118T110640Z-000042.jsonl.lz4.open")
        #expect(name.sealedFileName == "my-archive-20261118T110640Z-000042.jsonl.lz4")
        let parsed = try #require(SegmentName(fileName: name.sealedFileName))
        #expect(parsed.sinkID == "my-archive" && parsed.sequence == 42 && !parsed.isOpen)
        #expect(SegmentName(fileName: name.openFileName)?.isOpen == true)
        #expect(SegmentName(fileName: "a-20261118T110640Z-1234567.jsonl.lz4")?.sequence == 1_234_567)
        for bad in ["manifest.jsonl", "x.jsonl.lz4", "a-2026111T074640Z-000001.jsonl.lz4", "-20261118T110640Z-000001.jsonl.lz4",
                    "a-20261118T110640Z-00001.jsonl.lz4", "a-20261118T110640Z-000001.jsonl.lz4.salvage"] {
            #expect(SegmentName(fileName: bad) == nil, "\(bad)")
        }
        let names = ["b-20300101T000000Z-000010.jsonl.lz4", "a-20200101T000000Z-000009.jsonl.lz4.open", "z-20100101T000000Z-000002.jsonl.lz4"]
            .compactMap(SegmentName.init(fileName:)).sorted()
        #expect(names.map(\.sequence) == [2, 9, 10])
        #expect(name.stampNs == 1_795_000_000_000_000_000)
    }

    @Test func timesFormatAndParseLikeEventRecords() throws {
        let ns: Int64 = 1_795_000_000_123_456_789
        #expect(ArchiveTime.format(ns) == "2026-11-18T11:06:40.123456789Z")
        #expect(ArchiveTime.parse(Array("2026-11-18T11:06:40.123456789Z".utf8)) == ns)
        #expect(ArchiveTime.parse(Array("2026-11-18T11:06:40.5Z".utf8)) == 1_795_000_000_500_000_000)
        #expect(ArchiveTime.parse(Array("2026-11-18T11:06:40Z".utf8)) == 1_795_000_000_000_000_000)
        #expect(ArchiveTime.parse(Array("1970-01-01T00:00:00.000000000Z".utf8)) == 0)
        for bad in ["2026-11-18 11:06:40Z", "2026-13-18T11:06:40Z", "2026-11-18T11:06:40.Z", "2026-11-18T11:06:40.1234567890Z", "soon",
                    // Past Int64 nanoseconds (2262-04-11): once an overflow trap (found by fuzz/manifest_reader).
                    "9999-12-31T23:59:59.999999999Z", "2262-04-12T00:00:00Z"] {
            #expect(ArchiveTime.parse(Array(bad.utf8)) == nil, "\(bad)")
        }
        for (line, expected) in [("{\"time\":\"2026-11-18T11:06:40.123456789Z\",\"x\":1}", ns), ("{\"time\":-5}", -5), ("{\"x\":1}", nil)] as [(String, Int64?)] {
            #expect(Array(line.utf8).withUnsafeBytes { ArchiveTime.ofRecord($0) } == expected, "\(line)")
        }
    }

    @Test func manifestRoundTripsAndReportsBadLines() throws {
        let directory = try scratchDirectory("manifest")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let manifest = ArchiveManifest(directory: ArchiveDirectory(directory))
        #expect(try manifest.read().exists == false)
        let entries = (1...3).map {
            ManifestEntry(segment: "a-20261118T110640Z-00000\($0).jsonl.lz4", firstTimeNs: 1_795_000_000_000_000_000 + Int64($0),
                          lastTimeNs: 1_795_000_001_000_000_000 + Int64($0), events: $0 * 10, bytes: $0 * 1000)
        }
        try manifest.write(Array(entries[0..<2]))
        try manifest.append(entries[2])
        let read = try manifest.read()
        #expect(read.exists && read.entries == entries && read.problems.isEmpty)
        #expect(try String(contentsOfFile: manifest.path, encoding: .utf8).hasPrefix(
            #"{"segment":"a-20261118T110640Z-000001.jsonl.lz4","first_time":"2026-11-18T11:06:40.000000001Z","last_time":"2026-11-18T11:06:41.000000001Z","events":10,"bytes":1000}"#))

        // A bad line in the middle and an append a crash cut short.
        let handle = try #require(FileHandle(forWritingAtPath: manifest.path))
        handle.seekToEndOfFile()
        handle.write(Data("{\"segment\":\"nope\",\"first_time\":\"x\"}\n".utf8))
        handle.write(Data(entries[0].line.utf8))
        handle.write(Data("{\"segment\":\"a-2026".utf8))
        handle.closeFile()
        let damaged = try manifest.read()
        #expect(damaged.entries == entries + [entries[0]])
        #expect(damaged.problems.map(\.line) == [4, 6])
        #expect(damaged.problems[1].message == "incomplete last line (no newline)")
    }
}

@Suite("archive: segment frames")
struct SegmentFrameTests {
    @Test func writerFramesAreWhatLz4CliReadsAndTheReaderGivesBack() throws {
        let directory = try scratchDirectory("frame")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/a-20261118T110640Z-000001.jsonl.lz4"
        let lines = numberedLines(0..<20_000)
        let fd = try FileIO.open(path, O_WRONLY | O_CREAT | O_TRUNC)
        let writer = try LZ4FrameWriter(fd: fd, path: path, blockSize: .kib64)
        for chunk in stride(from: 0, to: lines.count, by: 777) {
            try writer.append(Array(lines[chunk..<min(lines.count, chunk + 777)].joined().utf8))
        }
        try writer.finish()
        close(fd)
        let expected = Array(lines.joined().utf8)
        #expect(writer.contentBytes == expected.count)
        #expect(writer.bytesWritten == FileIO.fileSize(path))

        let lz4 = try runTool(["lz4", "-dc", path])
        #expect(lz4.status == 0)
        let sameAsLZ4 = Array(lz4.stdout) == expected  // A Bool, not `==` inside #expect: a failing comparison of megabytes would make the test library diff them for minutes.
        #expect(sameAsLZ4, "lz4 -dc gave \(lz4.stdout.count) bytes, expected \(expected.count)")

        var content: [UInt8] = []
        let summary = try SegmentReader(path: path).readLines { span in
            content += span
            return true
        }
        let same = content == expected
        #expect(same, "read \(content.count) bytes, expected \(expected.count)")
        #expect(summary.read.ending == .complete)
        #expect(summary.read.blocks > 10)
        #expect(summary.records == 20_000)
        #expect(summary.firstTimeNs == 1_795_000_000_000_000_000)
        let expectedLast: Int64 = 1_795_000_000_000_000_000 + 19_999 * 1_000_003
        #expect(summary.lastTimeNs == expectedLast)
        #expect(summary.partialTailBytes == 0)
        #expect(SegmentReader.isSegment(path: path))
    }

    @Test func readsFramesTheLz4CliWrites() throws {
        let directory = try scratchDirectory("cli-frame")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let plain = directory + "/in.jsonl"
        let lines = numberedLines(0..<5000)
        try lines.joined().write(toFile: plain, atomically: false, encoding: .utf8)
        for flags in [["-B4", "-BX"], ["-B5", "--no-frame-crc"], ["-B4", "-BD"]] {
            let path = directory + "/out.lz4"
            #expect(try runTool(["lz4", "-q", "-f"] + flags + [plain, path]).status == 0)
            var content: [UInt8] = []
            let result = try SegmentReader(path: path).read { chunk in
                content += chunk
                return true
            }
            #expect(result.ending == .complete, "\(flags)")
            #expect(content == Array(lines.joined().utf8), "\(flags)")
        }
    }

    @Test func aCutShortFrameIsReadUpToItsLastCompleteBlock() throws {
        let directory = try scratchDirectory("cut")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/a-20261118T110640Z-000001.jsonl.lz4.open"
        let groups = (0..<8).map { numberedLines(($0 * 100)..<($0 * 100 + 100)) }
        let ends = try writeSegment(path, groups: groups, finish: false)
        let full = try bytes(path)
        // Cut at every block boundary, and inside every block.
        for (index, end) in ends.enumerated() {
            for cut in [end, end - 1, end - 5] where cut > 0 {
                try Data(full[0..<cut]).write(to: URL(fileURLWithPath: path))
                let wholeBlocks = cut == end ? index + 1 : index
                var content: [UInt8] = []
                let summary = try SegmentReader(path: path).readLines { span in
                    content += span
                    return true
                }
                #expect(summary.read.ending == .truncated, "cut \(cut)")
                #expect(summary.read.blocks == wholeBlocks, "cut \(cut)")
                #expect(summary.records == wholeBlocks * 100, "cut \(cut)")
                #expect(content == Array(groups[0..<wholeBlocks].joined().joined().utf8), "cut \(cut)")
                #expect(summary.read.goodBytes == (wholeBlocks == 0 ? 7 : ends[wholeBlocks - 1]), "cut \(cut)")
            }
        }
        // Shorter than a header, or empty: nothing, but not damage.
        for cut in [0, 3, 6] {
            try Data(full[0..<cut]).write(to: URL(fileURLWithPath: path))
            #expect(try SegmentReader.summarize(path: path).read.ending == .truncated)
        }
    }

    @Test func aFlippedByteIsCaughtAndTheBlocksBeforeItAreKept() throws {
        let directory = try scratchDirectory("flip")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/a-20261118T110640Z-000001.jsonl.lz4"
        let groups = (0..<5).map { numberedLines(($0 * 200)..<($0 * 200 + 200)) }
        let ends = try writeSegment(path, groups: groups)
        var data = try bytes(path)
        // A byte in the middle of block 3's data.
        data[(ends[1] + ends[2]) / 2] ^= 0x40
        try Data(data).write(to: URL(fileURLWithPath: path))
        let summary = try SegmentReader.summarize(path: path)
        let damage = try #require(summary.read.damage)
        #expect(damage.hasPrefix("block 3 at offset \(ends[1]):"), "\(damage)")
        #expect(damage.contains("checksum") || damage.contains("corrupt"), "\(damage)")
        #expect(summary.records == 400)
        #expect(try runTool(["lz4", "-t", path]).status != 0)

        // Restore that byte and flip one of the content checksum instead.
        var tail = try bytes(path)
        tail[(ends[1] + ends[2]) / 2] ^= 0x40
        tail[tail.count - 1] ^= 0xFF
        try Data(tail).write(to: URL(fileURLWithPath: path))
        #expect(try SegmentReader.summarize(path: path).read.damage == "frame end: content checksum mismatch")

        var trailing = tail
        trailing[trailing.count - 1] ^= 0xFF
        trailing.append(0)
        try Data(trailing).write(to: URL(fileURLWithPath: path))
        #expect(try SegmentReader.summarize(path: path).read.damage?.hasPrefix("bytes after the end of the frame") == true)

        try Data("not lz4 at all\n".utf8).write(to: URL(fileURLWithPath: path))
        #expect(try SegmentReader.summarize(path: path).read.damage == "not an LZ4 frame (bad magic number)")
    }
}

@Suite("archive: damage anywhere")
struct SegmentDamageTests {
    /// Every single-bit flip anywhere in a segment is caught, and what was
    /// delivered before it is always whole, verified blocks of the original
    /// content: never a crash, never a wrong byte. (Flips of a block's
    /// "uncompressed" bit pass the block checksum; the NDJSON text check
    /// catches those at the block.)
    @Test func everyFlippedBitIsCaughtOrHarmless() throws {
        let directory = try scratchDirectory("fuzz")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/a-20261118T110640Z-000001.jsonl.lz4"
        let groups = (0..<3).map { numberedLines(($0 * 30)..<($0 * 30 + 30)) }
        try writeSegment(path, groups: groups)
        let original = try bytes(path)
        let content = Array(groups.joined().joined().utf8)
        let blockContents = groups.map { Array($0.joined().utf8) }
        var caught = 0
        for position in 0..<original.count {
            for bit: UInt8 in [0x01, 0x80] {
                var damaged = original
                damaged[position] ^= bit
                try Data(damaged).write(to: URL(fileURLWithPath: path))
                var delivered: [UInt8] = []
                let summary = try SegmentReader(path: path).readLines { span in
                    delivered += span
                    return true
                }
                let result = summary.read
                if result.ending == .complete {
                    #expect(delivered == content, "flip at \(position) went unnoticed and changed the content")
                } else {
                    caught += 1
                    #expect(result.damage != nil || result.ending == .truncated, "flip at \(position): \(result.ending)")
                    #expect(delivered == Array(blockContents[0..<result.blocks].joined()), "flip at \(position)")
                }
            }
        }
        #expect(caught == 2 * original.count, "every flip in a checksummed frame is caught")
    }
}

@Suite("archive: salvage, recovery, verify")
struct ArchiveRecoveryTests {
    @Test func salvageKeepsEveryWholeRecordOfEveryCompleteBlock() throws {
        let directory = try scratchDirectory("salvage")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let archive = ArchiveDirectory(directory)
        let name = SegmentName(sinkID: "a", firstTimeNs: 1_795_000_000_000_000_000, sequence: 7)
        // A record split across blocks 2 and 3, then a cut inside block 3.
        let lines = numberedLines(0..<300)
        let text = lines.joined()
        let splitAt = Array(lines[0..<200].joined().utf8).count + 10
        let utf8 = Array(text.utf8)
        let ends = try writeSegment(archive.path(of: name), groups: [
            Array(lines[0..<100]), [String(decoding: utf8[Array(lines[0..<100].joined().utf8).count..<splitAt], as: UTF8.self)],
            [String(decoding: utf8[splitAt...], as: UTF8.self)],
        ], finish: false)
        let full = try bytes(archive.path(of: name))
        try Data(full[0..<(ends[2] - 3)]).write(to: URL(fileURLWithPath: archive.path(of: name)))

        let outcome = try SegmentSalvage.salvage(name, in: archive, blockSize: .kib64)
        #expect(outcome.keptRecords == 200)
        #expect(outcome.partialTailBytes == 10)
        #expect(outcome.droppedBytes == ends[2] - 3 - ends[1])
        #expect(outcome.damage == nil)
        let entry = try #require(outcome.sealed)
        #expect(entry.segment == name.sealedFileName && entry.events == 200)
        #expect(entry.firstTimeNs == 1_795_000_000_000_000_000)
        #expect(entry.lastTimeNs == 1_795_000_000_000_000_000 + 199 * 1_000_003)
        #expect(entry.bytes == FileIO.fileSize(directory + "/" + name.sealedFileName))
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory) == [name.sealedFileName])
        let lz4 = try runTool(["lz4", "-dc", directory + "/" + name.sealedFileName])
        #expect(lz4.status == 0 && String(decoding: lz4.stdout, as: UTF8.self) == lines[0..<200].joined())
    }

    @Test func salvageOfAnEmptyOpenSegmentRemovesIt_andOfADamagedOneKeepsTheOriginal() throws {
        let directory = try scratchDirectory("salvage2")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let archive = ArchiveDirectory(directory)
        let empty = SegmentName(sinkID: "a", firstTimeNs: 0, sequence: 1)
        #expect(FileManager.default.createFile(atPath: archive.path(of: empty), contents: Data()))
        let outcome = try SegmentSalvage.salvage(empty, in: archive, blockSize: .kib64)
        #expect(outcome.sealed == nil && outcome.keptRecords == 0)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).isEmpty)

        let damaged = SegmentName(sinkID: "a", firstTimeNs: 0, sequence: 2)
        let ends = try writeSegment(archive.path(of: damaged), groups: [numberedLines(0..<50), numberedLines(50..<100)], finish: false)
        var data = try bytes(archive.path(of: damaged))
        data[ends[1] - 10] ^= 1
        try Data(data).write(to: URL(fileURLWithPath: archive.path(of: damaged)))
        let kept = try SegmentSalvage.salvage(damaged, in: archive, blockSize: .kib64)
        #expect(kept.keptRecords == 50)
        #expect(kept.damage?.hasPrefix("block 2") == true)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
            == [damaged.sealedFileName, damaged.base + ".jsonl.lz4.damaged"])

        // Damage in the first block: nothing to seal, the original is kept,
        // and its sequence number stays taken.
        let lost = SegmentName(sinkID: "a", firstTimeNs: 0, sequence: 3)
        try writeSegment(archive.path(of: lost), groups: [numberedLines(0..<50)], finish: false)
        var lostData = try bytes(archive.path(of: lost))
        lostData[20] ^= 1
        try Data(lostData).write(to: URL(fileURLWithPath: archive.path(of: lost)))
        let recovered = try ArchiveRecovery.recover(archive, blockSize: .kib64, logger: quietLogger)
        #expect(recovered.salvaged.map(\.keptRecords) == [0])
        #expect(recovered.salvaged.first?.sealed == nil)
        #expect(recovered.nextSequence == 4)
        #expect(recovered.entries.map(\.segment) == [damaged.sealedFileName])
        #expect(FileManager.default.fileExists(atPath: directory + "/" + lost.base + ".jsonl.lz4.damaged"))
        let report = try ArchiveVerifier.verify(archive)
        #expect(report.isClean)
        #expect(report.notes.filter { $0.contains(".damaged") }.count == 2)
    }

    @Test func recoveryRepairsTheManifestAndContinuesTheSequence() throws {
        let directory = try scratchDirectory("recover")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let archive = ArchiveDirectory(directory)
        let manifest = ArchiveManifest(directory: archive)
        func sealed(_ sequence: Int) throws -> ManifestEntry {
            let name = SegmentName(sinkID: "a", firstTimeNs: 1_795_000_000_000_000_000, sequence: sequence, isOpen: false)
            try writeSegment(archive.path(of: name), groups: [numberedLines(0..<(sequence * 10))])
            return SegmentSalvage.entry(name, try SegmentReader.summarize(path: archive.path(of: name)), bytes: FileIO.fileSize(archive.path(of: name))!)
        }
        let first = try sealed(1)
        let second = try sealed(2)
        let third = try sealed(5)
        try manifest.write([first])
        // An append cut short, a sealed segment never listed, an .open one, and a leftover temporary.
        let handle = try #require(FileHandle(forWritingAtPath: manifest.path))
        handle.seekToEndOfFile()
        handle.write(Data(second.line.utf8.dropLast(9)))
        handle.closeFile()
        let open = SegmentName(sinkID: "a", firstTimeNs: 1_795_000_000_000_000_000, sequence: 6)
        try writeSegment(archive.path(of: open), groups: [numberedLines(0..<33)], finish: false)
        #expect(FileManager.default.createFile(atPath: directory + "/a-20261118T110640Z-000004.jsonl.lz4.salvage", contents: Data([1, 2, 3])))

        let recovered = try ArchiveRecovery.recover(archive, blockSize: .kib64, logger: quietLogger)
        #expect(recovered.nextSequence == 7)
        #expect(recovered.salvaged.map(\.keptRecords) == [33])
        #expect(recovered.entries.map(\.segment) == [first.segment, second.segment, third.segment, open.sealedFileName])
        #expect(recovered.entries.map(\.events) == [10, 20, 50, 33])
        #expect(try manifest.read().entries == recovered.entries)
        #expect(try ArchiveVerifier.verify(archive).isClean)
        #expect(!FileManager.default.fileExists(atPath: directory + "/a-20261118T110640Z-000004.jsonl.lz4.salvage"))
    }

    @Test func verifyNamesEveryDamagedSegmentAndManifestMismatch() throws {
        let directory = try scratchDirectory("verify")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let archive = ArchiveDirectory(directory)
        var entries: [ManifestEntry] = []
        var ends: [[Int]] = []
        for sequence in 1...6 {
            let name = SegmentName(sinkID: "v", firstTimeNs: 1_795_000_000_000_000_000, sequence: sequence, isOpen: false)
            ends.append(try writeSegment(archive.path(of: name), groups: [numberedLines(0..<100), numberedLines(100..<200)]))
            entries.append(SegmentSalvage.entry(name, try SegmentReader.summarize(path: archive.path(of: name)), bytes: FileIO.fileSize(archive.path(of: name))!))
        }
        let manifest = ArchiveManifest(directory: archive)
        try manifest.write(entries)
        let clean = try ArchiveVerifier.verify(archive)
        #expect(clean.isClean && clean.sealedSegments == 6 && clean.records == 1200)

        // 1: a flipped byte. 2: missing. 3: unlisted. 4: wrong count. 5: cut short. 6: fine.
        var data = try bytes(directory + "/" + entries[0].segment)
        data[ends[0][0] + 20] ^= 0x08
        try Data(data).write(to: URL(fileURLWithPath: directory + "/" + entries[0].segment))
        try FileManager.default.removeItem(atPath: directory + "/" + entries[1].segment)
        var listed = entries
        listed.remove(at: 2)
        listed[2].events += 1
        try manifest.write(listed)
        let cut = try bytes(directory + "/" + entries[4].segment)
        try Data(cut.dropLast(6)).write(to: URL(fileURLWithPath: directory + "/" + entries[4].segment))
        let open = SegmentName(sinkID: "v", firstTimeNs: 1_795_000_000_000_000_000, sequence: 7)
        try writeSegment(archive.path(of: open), groups: [numberedLines(0..<5)], finish: false)

        let report = try ArchiveVerifier.verify(archive)
        #expect(report.damagedFiles == [entries[0].segment, entries[4].segment, entries[1].segment, entries[3].segment, entries[2].segment])
        let messages = Dictionary(report.findings.map { ($0.file, $0.message) }, uniquingKeysWith: { $0 + "; " + $1 })
        #expect(messages[entries[0].segment]?.hasPrefix("block 2") == true)
        #expect(messages[entries[1].segment] == "listed in the manifest but missing")
        #expect(messages[entries[2].segment] == "sealed but not listed in the manifest")
        #expect(messages[entries[3].segment] == "manifest says events 201, file has 200")
        #expect(messages[entries[4].segment]?.hasPrefix("cut short") == true)
        #expect(messages[entries[5].segment] == nil)
        #expect(report.notes.count == 1 && report.notes[0].contains("5 whole record(s)"))
    }
}
