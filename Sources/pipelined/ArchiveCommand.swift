import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif
import EventArchive
import PipelineCore

/// `pipelined archive ls|cat|verify`: read what an `lz4_segments` sink wrote.
struct ArchiveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "archive",
        abstract: "List, print and verify an lz4_segments archive.",
        subcommands: [List.self, Cat.self, Verify.self]
    )

    /// `archive ls DIR`: the sealed segments, oldest first, in aligned columns.
    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "ls",
            abstract: "List sealed segments: name, first and last event time, events, bytes."
        )

        @ArgumentParser.Argument(help: "An archive directory.")
        var directory: String

        func run() throws {
            let archive = ArchiveDirectory(directory)
            let rows: [ManifestEntry]
            do {
                rows = try Self.rows(archive)
            } catch {
                ArchiveCommand.fail("archive ls: \(error)")
            }
            print(Self.render(rows), terminator: "")
        }

        /// The manifest's entries for the sealed files present; a sealed file the
        /// manifest does not list is read to fill its row (and said on stderr).
        static func rows(_ archive: ArchiveDirectory) throws -> [ManifestEntry] {
            guard FileIO.isDirectory(archive.path) else {
                throw ArchiveError(path: archive.path, message: "not a directory")
            }
            let contents = try ArchiveManifest(directory: archive).read()
            var listed: [String: ManifestEntry] = [:]
            for entry in contents.entries { listed[entry.segment] = entry }
            var rows: [ManifestEntry] = []
            let segments = try archive.segments().filter { !$0.isOpen }
            for name in segments {
                if let entry = listed[name.sealedFileName] {
                    rows.append(entry)
                    continue
                }
                let path = archive.path(of: name)
                let summary = try SegmentReader.summarize(path: path)
                FileHandleStderr.write("pipelined: \(name.sealedFileName): not in the manifest; read from the file\n")
                rows.append(SegmentSalvage.entry(name, summary, bytes: FileIO.fileSize(path) ?? 0))
            }
            let present = Set(segments.map(\.sealedFileName))
            for entry in contents.entries where !present.contains(entry.segment) {
                FileHandleStderr.write("pipelined: \(entry.segment): listed in the manifest but missing\n")
            }
            return rows
        }

        /// Left-aligned text columns, right-aligned numbers, one header line.
        static func render(_ rows: [ManifestEntry]) -> String {
            let header = ["SEGMENT", "FIRST", "LAST", "EVENTS", "BYTES"]
            let cells = rows.map { [$0.segment, ArchiveTime.format($0.firstTimeNs), ArchiveTime.format($0.lastTimeNs), String($0.events), String($0.bytes)] }
            var widths = header.map(\.count)
            for row in cells {
                for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.count) }
            }
            func line(_ row: [String]) -> String {
                var text = ""
                for (index, cell) in row.enumerated() {
                    let pad = String(repeating: " ", count: widths[index] - cell.count)
                    if index > 0 { text += "  " }
                    text += index >= 3 ? pad + cell : (index == row.count - 1 ? cell : cell + pad)
                }
                return text + "\n"
            }
            return ([header] + cells).map(line).joined()
        }
    }

    /// `archive cat PATH...`: the records of segments as NDJSON, oldest first.
    struct Cat: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "cat",
            abstract: "Print the events of segments (files or directories, oldest first) as NDJSON.",
            discussion: "A .open segment is printed up to its last complete block. Exit status 65 when a segment is damaged (what precedes the damage is printed), 1 when a path cannot be read."
        )

        @ArgumentParser.Argument(help: "Segment files or archive directories.")
        var paths: [String]

        func validate() throws {
            if paths.isEmpty { throw ValidationError("give at least one segment file or archive directory") }
        }

        func run() throws {
            var status: Int32 = ExitStatus.success
            for path in paths {
                let files: [String]
                if FileIO.isDirectory(path) {
                    do {
                        let archive = ArchiveDirectory(path)
                        files = try archive.segments().map { archive.path(of: $0) }
                    } catch {
                        FileHandleStderr.write("pipelined: archive cat: \(error)\n")
                        status = max(status, ExitStatus.failure)
                        continue
                    }
                } else {
                    files = [path]
                }
                for file in files {
                    status = max(status, Self.print(file))
                }
            }
            if status != ExitStatus.success { throw ExitCode(status) }
        }

        /// Prints one segment's whole records to stdout; returns the exit status it calls for.
        static func print(_ path: String) -> Int32 {
            let summary: SegmentSummary
            do {
                let reader = try SegmentReader(path: path)
                summary = try reader.readLines { span in
                    try FileIO.writeAll(STDOUT_FILENO, span, path: "standard output")
                    return true
                }
            } catch {
                FileHandleStderr.write("pipelined: archive cat: \(error)\n")
                return ExitStatus.failure
            }
            let isOpen = path.hasSuffix(SegmentName.openSuffix)
            switch summary.read.ending {
            case .damaged(let reason):
                FileHandleStderr.write("pipelined: \(path): damaged: \(reason) (printed the \(summary.records) record(s) before it)\n")
                return ExitStatus.damagedArchive
            case .truncated where !isOpen:
                FileHandleStderr.write("pipelined: \(path): damaged: cut short (printed the \(summary.records) record(s) of its complete blocks)\n")
                return ExitStatus.damagedArchive
            default:
                if summary.partialTailBytes > 0, !isOpen {
                    FileHandleStderr.write("pipelined: \(path): damaged: ends inside a record\n")
                    return ExitStatus.damagedArchive
                }
                return ExitStatus.success
            }
        }
    }

    /// `archive verify DIR`: every frame's checksums and the manifest against
    /// the files; names each damaged segment and exits 65 if there is one.
    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "verify",
            abstract: "Check every segment and the manifest; name each damaged one (exit status 65)."
        )

        @ArgumentParser.Argument(help: "An archive directory.")
        var directory: String

        func run() throws {
            guard FileIO.isDirectory(directory) else {
                ArchiveCommand.fail("archive verify: \(directory): not a directory")
            }
            let report: ArchiveReport
            do {
                report = try ArchiveVerifier.verify(ArchiveDirectory(directory))
            } catch {
                ArchiveCommand.fail("archive verify: \(error)")
            }
            for note in report.notes { Swift.print("note: \(note)") }
            for finding in report.findings { Swift.print("damaged: \(finding)") }
            let damaged = report.damagedFiles
            Swift.print("\(report.sealedSegments) sealed segment(s), \(report.records) record(s): "
                + (damaged.isEmpty ? "ok" : "\(damaged.count) damaged: " + damaged.joined(separator: ", ")))
            if !damaged.isEmpty { throw ExitCode(ExitStatus.damagedArchive) }
        }
    }

    /// Prints `pipelined: MESSAGE` on stderr and exits 1 (a runtime failure).
    static func fail(_ message: String) -> Never {
        FileHandleStderr.write("pipelined: \(message)\n")
        Glibc.exit(ExitStatus.failure)
    }
}
