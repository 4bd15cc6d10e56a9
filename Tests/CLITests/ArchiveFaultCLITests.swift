import EventArchive
import Foundation
import PipelineCore
import Testing
@testable import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// SIGKILL at an exact step of sealing a segment (the archive's failpoints,
/// docs/fault-injection.md), then a restart on the same directory.
@Suite("archive faults: a full disk, a kill while sealing")
struct ArchiveFaultCLITests {
    private func pipeline(_ scratch: URL, input: URL, archive: URL) throws -> URL {
        let path = scratch.appendingPathComponent("archive-\(input.lastPathComponent).yaml")
        try """
            sources:
              recorded: {type: replay, path: "\(input.path)"}
            sinks:
              store: {type: lz4_segments, inputs: [recorded], directory: "\(archive.path)", segment_bytes: 64KiB, block_size: 64KiB}
            """.write(to: path, atomically: true, encoding: .utf8)
        return path
    }

    /// Runs a command (mount, umount) to completion; its exit status.
    @discardableResult
    private func command(_ arguments: [String]) throws -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        try process.run()
        process.waitUntilExit()
        return process.terminationStatus
    }

    /// The measurement, as a user runs it (150,000 events, not 300,000,
    /// to stay short: 63 MB of NDJSON for a 2 MiB disk): replayed events into
    /// an archive on a 2 MiB tmpfs and a file sink beside it. The file
    /// gets every event, the run exits 0, the archive verifies, and what it
    /// holds plus its stage's lost count is every event.
    @Test(.enabled(if: getuid() == 0)) func aFullDiskUnderTheArchiveLeavesTheRunAndTheOtherSinkWhole() throws {
        let scratch = try CLI.temporaryDirectory("fulldisk")
        defer { try? FileManager.default.removeItem(at: scratch) }
        let disk = scratch.appendingPathComponent("disk")
        try FileManager.default.createDirectory(at: disk, withIntermediateDirectories: true)
        try #require(try command(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", disk.path]) == 0)
        defer { try? command(["umount", "-l", disk.path]) }
        let total = 150_000
        let input = scratch.appendingPathComponent("in.jsonl")
        try writeConnectLines(total, to: input)
        let archive = disk.appendingPathComponent("archive")
        let all = scratch.appendingPathComponent("all.jsonl")
        let pipeline = scratch.appendingPathComponent("full.yaml")
        try """
            sources:
              recorded: {type: replay, path: "\(input.path)"}
            sinks:
              store: {type: lz4_segments, inputs: [recorded], directory: "\(archive.path)", segment_bytes: 256KiB, block_size: 64KiB}
              all: {type: file, inputs: [recorded], path: "\(all.path)"}
            """.write(to: pipeline, atomically: true, encoding: .utf8)

        let result = try CLI.run(["run", pipeline.path])
        #expect(result.status == 0, "\(result.stderr.suffix(2000))")
        let lines = try Data(contentsOf: all).reduce(0) { $1 == UInt8(ascii: "\n") ? $0 + 1 : $0 }
        #expect(lines == total, "the file sink got every event")
        let episodes = result.stderr.split(separator: "\n").filter { $0.contains("No space left on device") && $0.contains("dropping events") }
        #expect(episodes.count == 1, "one error for the episode: \(episodes)")
        let totals = try #require(result.stderr.split(separator: "\n").first { $0.contains("stage=store") && $0.contains("stage totals") })
        let lost = try #require(totals.split(separator: " ").first { $0.hasPrefix("lost=") }.flatMap { Int($0.dropFirst(5)) })
        var archived = 0
        for name in try ArchiveDirectory(archive.path).segments() {
            archived += try SegmentReader.summarize(path: ArchiveDirectory(archive.path).path(of: name)).records
        }
        #expect(lost > 0)
        #expect(archived + lost == total, "\(archived) archived + \(lost) lost")
        let verify = try CLI.run(["archive", "verify", archive.path])
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
    }

    @Test(arguments: ["seal.before-fsync", "seal.before-rename", "seal.after-rename"])
    func aKillWhileSealingIsRecoveredOnTheNextStart(_ failpoint: String) throws {
        let scratch = try CLI.temporaryDirectory("failpoint")
        defer { try? FileManager.default.removeItem(at: scratch) }
        let input = scratch.appendingPathComponent("in.jsonl")
        try writeConnectLines(20_000, to: input)
        let empty = scratch.appendingPathComponent("empty.jsonl")
        try Data().write(to: empty)
        let archive = scratch.appendingPathComponent("archive")

        let killed = try CLI.start(["run", try pipeline(scratch, input: input, archive: archive).path], environment: ["PIPELINED_FAILPOINT": failpoint])
        let result = killed.finish(timeout: 60)
        #expect(killed.process.terminationReason == .uncaughtSignal && result.status == SIGKILL, "killed at \(failpoint): \(result.status) \(result.stderr)")
        let left = try ArchiveDirectory(archive.path).segments()
        #expect(left.count == 1, "the first seal was where it died: \(left.map(\.openFileName))")
        #expect(left.first?.isOpen == (failpoint != "seal.after-rename"))

        // The next start on the same directory (nothing new to write).
        let restart = try CLI.run(["run", try pipeline(scratch, input: empty, archive: archive).path])
        #expect(restart.status == 0, "\(restart.stderr)")
        if failpoint == "seal.after-rename" {
            #expect(restart.stderr.contains("sealed but not in the manifest; added"), "\(restart.stderr)")
        } else {
            #expect(restart.stderr.contains("salvaged"), "\(restart.stderr)")
        }
        let verify = try CLI.run(["archive", "verify", archive.path])
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
        let entries = try ArchiveManifest(directory: ArchiveDirectory(archive.path)).read().entries
        let sealed = try ArchiveDirectory(archive.path).segments().filter { !$0.isOpen }.map(\.sealedFileName)
        #expect(entries.map(\.segment) == sealed, "each segment listed once")
        #expect(entries.count == 1)
        // Every complete block is kept: here the whole segment, the first records in order.
        let cat = try CLI.run(["archive", "cat", archive.path])
        let count = entries.first?.events ?? 0
        #expect(count > 100)
        #expect(cat.stdout == (0..<count).map { connectLine($0) + "\n" }.joined())
    }
}
