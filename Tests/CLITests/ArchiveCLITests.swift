import EventArchive
import Foundation
import PipelineCore
import Testing

@Suite("pipelined archive")
struct ArchiveCLITests {
    /// Writes a pipeline replaying `input` into an `lz4_segments` archive at `archive`.
    private func archivePipeline(_ scratch: URL, input: URL, archive: URL, segmentBytes: String = "64KiB", extra: String = "") throws -> URL {
        let pipeline = scratch.appendingPathComponent("archive.yaml")
        try """
            sources:
              recorded: {type: replay, path: "\(input.path)"}
            sinks:
              store: {type: lz4_segments, inputs: [recorded], directory: "\(archive.path)", segment_bytes: \(segmentBytes), block_size: 64KiB\(extra)}
            """.write(to: pipeline, atomically: true, encoding: .utf8)
        return pipeline
    }

    private func expectedLines(_ range: Range<Int>) -> String {
        range.map { connectLine($0) + "\n" }.joined()
    }

    private func sealedFiles(_ archive: URL) throws -> [String] {
        try ArchiveDirectory(archive.path).segments().filter { !$0.isOpen }.map(\.sealedFileName)
    }

    private func lz4Decompress(_ path: String) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["lz4", "-dc", path]
        let out = Pipe()
        process.standardOutput = out
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        return String(decoding: data, as: UTF8.self)
    }

    /// Archives 20000 records with `pipelined run`; returns the archive directory.
    private func makeArchive(_ scratch: URL, records: Int = 20_000) throws -> URL {
        let input = scratch.appendingPathComponent("in.jsonl")
        try writeConnectLines(records, to: input)
        let archive = scratch.appendingPathComponent("archive")
        let result = try CLI.run(["run", try archivePipeline(scratch, input: input, archive: archive).path])
        #expect(result.status == 0, "\(result.stderr)")
        return archive
    }

    @Test func runArchivesAndLsCatVerifyAndReplayReadItBack() throws {
        let scratch = try CLI.temporaryDirectory("archive")
        defer { try? FileManager.default.removeItem(at: scratch) }
        let archive = try makeArchive(scratch)
        let expected = expectedLines(0..<20_000)
        let sealed = try sealedFiles(archive)
        #expect(sealed.count > 3)
        #expect(sealed.allSatisfy { $0.hasPrefix("store-20261124T163413Z-") })

        // Every sealed segment is a plain LZ4 frame of NDJSON.
        var joined = ""
        for name in sealed { joined += try lz4Decompress(archive.appendingPathComponent(name).path) }
        #expect(joined == expected)

        let cat = try CLI.run(["archive", "cat", archive.path])
        #expect(cat.status == 0, "\(cat.stderr)")
        #expect(cat.stdout == expected)
        let two = try CLI.run(["archive", "cat", archive.appendingPathComponent(sealed[1]).path, archive.appendingPathComponent(sealed[0]).path])
        #expect(two.stdout == (try lz4Decompress(archive.appendingPathComponent(sealed[1]).path)) + (try lz4Decompress(archive.appendingPathComponent(sealed[0]).path)))

        let ls = try CLI.run(["archive", "ls", archive.path])
        #expect(ls.status == 0, "\(ls.stderr)")
        let rows = ls.stdout.split(separator: "\n").map(String.init)
        #expect(rows.count == sealed.count + 1)
        #expect(rows[0].split(separator: " ") == ["SEGMENT", "FIRST", "LAST", "EVENTS", "BYTES"])
        #expect(Set(rows.map(\.count)).count == 1, "aligned columns: \(ls.stdout)")
        let entries = try ArchiveManifest(directory: ArchiveDirectory(archive.path)).read().entries
        for (row, entry) in zip(rows.dropFirst(), entries) {
            #expect(row.split(separator: " ").map(String.init) == [
                entry.segment, ArchiveTime.format(entry.firstTimeNs), ArchiveTime.format(entry.lastTimeNs), String(entry.events), String(entry.bytes),
            ])
        }
        #expect(rows[1].split(separator: " ")[1] == "2026-11-24T16:34:13.000000000Z")
        #expect(entries.reduce(0) { $0 + $1.events } == 20_000)

        let verify = try CLI.run(["archive", "verify", archive.path])
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
        #expect(verify.stdout.hasSuffix("\(sealed.count) sealed segment(s), 20000 record(s): ok\n"))

        // The replay source reads the archive directory (oldest first) and a single segment.
        for (path, want) in [(archive.path, expected), (archive.appendingPathComponent(sealed[2]).path, try lz4Decompress(archive.appendingPathComponent(sealed[2]).path))] {
            let output = scratch.appendingPathComponent("replayed.jsonl")
            try? FileManager.default.removeItem(at: output)
            let pipeline = scratch.appendingPathComponent("replay.yaml")
            try """
                sources:
                  old: {type: replay, path: "\(path)"}
                sinks:
                  out: {type: file, inputs: [old], path: "\(output.path)"}
                """.write(to: pipeline, atomically: true, encoding: .utf8)
            let replay = try CLI.run(["run", pipeline.path])
            #expect(replay.status == 0, "\(replay.stderr)")
            #expect(try String(contentsOf: output, encoding: .utf8) == want, "replay of \(path)")
        }
    }

    @Test func verifyNamesADamagedSegmentAndExits65() throws {
        let scratch = try CLI.temporaryDirectory("damage")
        defer { try? FileManager.default.removeItem(at: scratch) }
        let archive = try makeArchive(scratch)
        let sealed = try sealedFiles(archive)
        try #require(sealed.count > 3)
        let victim = archive.appendingPathComponent(sealed[1])
        var data = try Data(contentsOf: victim)
        data[data.count / 2] ^= 0x20
        try data.write(to: victim)

        let verify = try CLI.run(["archive", "verify", archive.path])
        #expect(verify.status == 65)
        #expect(verify.stdout.contains("damaged: \(sealed[1]): block "), "\(verify.stdout)")
        #expect(verify.stdout.hasSuffix("1 damaged: \(sealed[1])\n"), "\(verify.stdout)")
        for other in sealed where other != sealed[1] { #expect(!verify.stdout.contains(other)) }

        // cat prints the whole records before the damage, names the segment, exits 65.
        let cat = try CLI.run(["archive", "cat", victim.path])
        #expect(cat.status == 65)
        #expect(cat.stderr.contains("\(victim.path): damaged: block "), "\(cat.stderr)")
        let lines = cat.stdout.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(cat.stdout.isEmpty || cat.stdout.hasSuffix("\n"))
        let full = try ArchiveManifest(directory: ArchiveDirectory(archive.path)).read().entries[1].events
        #expect(lines.count - 1 < full)

        // A missing segment and one the manifest does not list are named too.
        try FileManager.default.removeItem(at: archive.appendingPathComponent(sealed[3]))
        let manifest = ArchiveManifest(directory: ArchiveDirectory(archive.path))
        try manifest.write(try manifest.read().entries.filter { $0.segment != sealed[0] })
        let again = try CLI.run(["archive", "verify", archive.path])
        #expect(again.status == 65)
        #expect(again.stdout.contains("damaged: \(sealed[3]): listed in the manifest but missing"), "\(again.stdout)")
        #expect(again.stdout.contains("damaged: \(sealed[0]): sealed but not listed in the manifest"), "\(again.stdout)")
        #expect(again.stdout.hasSuffix("3 damaged: \(sealed[1]), \(sealed[3]), \(sealed[0])\n"), "\(again.stdout)")
    }

    @Test func usageAndMissingPaths() throws {
        #expect(try CLI.run(["archive", "cat"]).status == 2)
        #expect(try CLI.run(["archive", "verify"]).status == 2)
        let missing = try CLI.run(["archive", "verify", "/nonexistent/archive"])
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("/nonexistent/archive"))
        #expect(try CLI.run(["archive", "ls", "/nonexistent/archive"]).status == 1)
        let cat = try CLI.run(["archive", "cat", "/nonexistent/segment.jsonl.lz4"])
        #expect(cat.status == 1)
        #expect(cat.stderr.contains("/nonexistent/segment.jsonl.lz4: cannot open"))
    }

    @Test func killDashNineThenRestartSalvagesTheOpenSegment() throws {
        let scratch = try CLI.temporaryDirectory("kill9")
        defer { try? FileManager.default.removeItem(at: scratch) }
        // The input is a FIFO the test holds open: the run is still running
        // when it is killed, however slow the machine.
        let feed = try Feed(in: scratch)
        let archive = scratch.appendingPathComponent("archive")
        // Large segments: everything so far stays in one .open segment.
        let pipeline = try archivePipeline(scratch, input: URL(fileURLWithPath: feed.path), archive: archive,
                                           segmentBytes: "64MiB", extra: ", flush_interval: 200ms").path

        let first = try CLI.start(["run", pipeline])
        #expect(feed.connect(), "the run never opened its input")
        feed.send(20_000)
        // The sink writes a block when its input goes idle: every record sent
        // reaches the .open segment in complete blocks.
        var openName: SegmentName?
        let flowing = first.waitFor { _, _ in
            guard let open = (try? ArchiveDirectory(archive.path).segments())?.first(where: \.isOpen),
                  let summary = try? SegmentReader.summarize(path: ArchiveDirectory(archive.path).path(of: open)) else { return false }
            openName = open
            return summary.records == 20_000
        }
        #expect(flowing, "the .open segment never held the 20000 records sent")
        first.signal(SIGKILL)
        let killed = first.finish()
        feed.close()
        #expect(killed.status != 0)
        let open = try #require(openName)
        #expect(FileManager.default.fileExists(atPath: ArchiveDirectory(archive.path).path(of: open)), "the .open segment is left")
        // What a crash leaves is readable up to its last complete block.
        let partial = try CLI.run(["archive", "cat", archive.path])
        #expect(partial.status == 0, "\(partial.stderr)")
        #expect(firstDifference(partial.stdout, expectedLines(0..<20_000)) == nil)

        // The restart salvages the .open segment before writing anything new.
        let second = try CLI.start(["run", pipeline])
        #expect(feed.connect(), "the restarted run never opened its input")
        let salvaged = second.waitFor { _, stderr in stderr.contains("salvaged \(open.openFileName)") }
        #expect(salvaged)
        feed.send(5_000)
        let restarted = second.waitFor { _, _ in
            guard ((try? sealedFiles(archive)) ?? []).count == 1,
                  let open = (try? ArchiveDirectory(archive.path).segments())?.first(where: \.isOpen),
                  let summary = try? SegmentReader.summarize(path: ArchiveDirectory(archive.path).path(of: open)) else { return false }
            return summary.records == 5_000
        }
        #expect(restarted)
        // Stopped while its input is still open: SIGTERM ends the wait for more.
        second.signal(SIGTERM)
        let stopped = second.finish()
        feed.close()
        #expect(stopped.status == 0, "\(stopped.stderr)")
        #expect(stopped.stderr.contains("salvaged \(open.openFileName): kept 20000 record(s) in \(open.sealedFileName)"), "\(stopped.stderr)")

        let verify = try CLI.run(["archive", "verify", archive.path])
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
        let sealed = try sealedFiles(archive)
        #expect(sealed.count == 2)
        #expect(sealed.first == open.sealedFileName)
        #expect(SegmentName(fileName: sealed[1])?.sequence == open.sequence + 1)
        #expect(firstDifference(try lz4Decompress(archive.appendingPathComponent(sealed[0]).path), expectedLines(0..<20_000)) == nil)
        let rerun = try lz4Decompress(archive.appendingPathComponent(sealed[1]).path)
        #expect(firstDifference(rerun, expectedLines(20_000..<25_000)) == nil)
        #expect(try ArchiveManifest(directory: ArchiveDirectory(archive.path)).read().entries.map(\.events) == [20_000, 5_000])
    }
}
