import PipelineCore

/// What `archive verify` found in a directory.
public struct ArchiveReport: Sendable, Equatable {
    /// One problem, naming the file it is in (a segment or the manifest).
    public struct Finding: Sendable, Equatable, CustomStringConvertible {
        public var file: String
        public var message: String
        /// A problem with `file` (a file name in the archive directory).
        public init(file: String, message: String) {
            self.file = file
            self.message = message
        }
        public var description: String { "\(file): \(message)" }
    }

    /// Sealed segments read end to end.
    public var sealedSegments = 0
    /// `.open` segments read up to their last complete block.
    public var openSegments = 0
    /// Records in all sealed segments.
    public var records = 0
    /// Every problem, in the order found (segments oldest first, then the manifest).
    public var findings: [Finding] = []
    /// Things worth saying that are not damage (an `.open` segment and what it holds).
    public var notes: [String] = []

    /// An empty report: nothing checked, nothing found.
    public init() {}

    /// True when nothing is damaged.
    public var isClean: Bool { findings.isEmpty }

    /// Each file with at least one finding, once, in order.
    public var damagedFiles: [String] {
        var seen = Set<String>()
        return findings.map(\.file).filter { seen.insert($0).inserted }
    }
}

/// Checks an archive directory: every frame's block and content checksums,
/// and the manifest against the files.
public enum ArchiveVerifier {
    /// Reads every segment and the manifest and reports:
    /// - a sealed segment that is cut short, fails a checksum, has bytes after
    ///   its frame, or ends inside a record;
    /// - a damaged block in an `.open` segment (being cut short is normal there);
    /// - a manifest line that cannot be read or lists a segment twice;
    /// - a segment listed but missing, a sealed segment not listed, and an
    ///   entry whose `events`, `bytes`, `first_time` or `last_time` disagree
    ///   with the file.
    /// Throws only when the directory itself cannot be read.
    public static func verify(_ directory: ArchiveDirectory) throws -> ArchiveReport {
        var report = ArchiveReport()
        let segments = try directory.segments()
        var actual: [String: (summary: SegmentSummary, bytes: Int)] = [:]

        for name in segments {
            let path = directory.path(of: name)
            let summary: SegmentSummary
            do {
                summary = try SegmentReader.summarize(path: path)
            } catch {
                report.findings.append(.init(file: name.fileName, message: "cannot be read: \(error)"))
                continue
            }
            if name.isOpen {
                report.openSegments += 1
                if let damage = summary.read.damage {
                    report.findings.append(.init(file: name.fileName, message: damage))
                } else {
                    report.notes.append("\(name.fileName): not sealed (being written, or left by a crash); \(summary.records) whole record(s) readable")
                }
                continue
            }
            report.sealedSegments += 1
            report.records += summary.records
            switch summary.read.ending {
            case .complete, .stopped:
                if summary.partialTailBytes > 0 {
                    report.findings.append(.init(file: name.fileName, message: "ends inside a record (\(summary.partialTailBytes) bytes after the last newline)"))
                }
            case .truncated:
                report.findings.append(.init(file: name.fileName, message: "cut short after \(summary.read.blocks) complete block(s) (no end mark)"))
            case .damaged(let reason):
                report.findings.append(.init(file: name.fileName, message: reason))
            }
            actual[name.sealedFileName] = (summary, FileIO.fileSize(path) ?? 0)
        }

        for damaged in try directory.damagedFiles() {
            report.notes.append("\(damaged.file): a damaged original kept by a salvage (what could be read was sealed as \(damaged.name.sealedFileName))")
        }

        let manifest = ArchiveManifest(directory: directory)
        let contents: ArchiveManifest.Contents
        do {
            contents = try manifest.read()
        } catch {
            report.findings.append(.init(file: ArchiveDirectory.manifestName, message: "cannot be read: \(error)"))
            return report
        }
        if !contents.exists, !actual.isEmpty {
            report.findings.append(.init(file: ArchiveDirectory.manifestName, message: "missing"))
        }
        for problem in contents.problems {
            report.findings.append(.init(file: ArchiveDirectory.manifestName, message: "line \(problem.line): \(problem.message)"))
        }
        var listed = Set<String>()
        for entry in contents.entries {
            guard listed.insert(entry.segment).inserted else {
                report.findings.append(.init(file: entry.segment, message: "listed more than once in the manifest"))
                continue
            }
            guard let (summary, bytes) = actual[entry.segment] else {
                report.findings.append(.init(file: entry.segment, message: "listed in the manifest but missing"))
                continue
            }
            var differences: [String] = []
            if entry.events != summary.records { differences.append("events \(entry.events), file has \(summary.records)") }
            if entry.bytes != bytes { differences.append("bytes \(entry.bytes), file has \(bytes)") }
            if let first = summary.firstTimeNs, first != entry.firstTimeNs {
                differences.append("first_time \(ArchiveTime.format(entry.firstTimeNs)), file has \(ArchiveTime.format(first))")
            }
            if let last = summary.lastTimeNs, last != entry.lastTimeNs {
                differences.append("last_time \(ArchiveTime.format(entry.lastTimeNs)), file has \(ArchiveTime.format(last))")
            }
            if !differences.isEmpty {
                report.findings.append(.init(file: entry.segment, message: "manifest says " + differences.joined(separator: "; ")))
            }
        }
        for name in segments where !name.isOpen && !listed.contains(name.sealedFileName) {
            report.findings.append(.init(file: name.sealedFileName, message: "sealed but not listed in the manifest"))
        }
        return report
    }
}
