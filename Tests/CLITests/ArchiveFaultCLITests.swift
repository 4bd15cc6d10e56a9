import EventArchive
import Foundation
import PipelineCore
import Testing
@testable import TestSupport

/// SIGKILL at an exact step of sealing a segment (the archive's failpoints,
/// docs/fault-injection.md), then a restart on the same directory.
@Suite("archive: killed while sealing")
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
