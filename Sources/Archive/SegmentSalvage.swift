#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Logging
import PipelineCore

/// What salvaging one `.open` segment did.
public struct SalvageOutcome: Sendable, Equatable {
    /// The `.open` file's name.
    public var openFile: String
    /// The sealed segment's manifest entry; nil when nothing whole could be kept.
    public var sealed: ManifestEntry?
    /// Whole records kept.
    public var keptRecords = 0
    /// Compressed bytes after the last complete block (an incomplete block, or
    /// everything from the damage on).
    public var droppedBytes = 0
    /// Bytes of a record cut short at the end of the last complete block.
    public var partialTailBytes = 0
    /// Why reading stopped before the end of the file, when it was damage
    /// rather than a plain cut; the original is then kept as `.damaged`.
    public var damage: String?
    /// The segment had already been sealed by a salvage a crash interrupted.
    public var alreadySealed = false

    /// One line for the log.
    public var summary: String {
        if alreadySealed { return "\(openFile): already salvaged as \(sealed?.segment ?? "?"); removed the leftover" }
        var text = "\(openFile): kept \(keptRecords) record(s)"
        if let sealed { text += " in \(sealed.segment)" } else { text += " (nothing whole to seal)" }
        var dropped: [String] = []
        if droppedBytes > 0 { dropped.append("\(droppedBytes) compressed byte(s) after the last complete block") }
        if partialTailBytes > 0 { dropped.append("a record cut short (\(partialTailBytes) bytes)") }
        if !dropped.isEmpty { text += "; dropped " + dropped.joined(separator: " and ") }
        if let damage { text += "; damage: \(damage) (original kept as \(openFile.dropLast(5)).damaged)" }
        return text
    }
}

/// Recovers what a crash left in an archive directory.
public enum SegmentSalvage {
    /// Seals an `.open` segment a crash left: every whole record of every
    /// complete block is written to a new, valid frame (`NAME.jsonl.lz4.salvage`),
    /// which is fsynced and renamed to `NAME.jsonl.lz4`; then the `.open` file is
    /// removed (or kept as `NAME.jsonl.lz4.damaged` when a checksum failed, so
    /// that nothing is destroyed unread). The caller records the entry in the
    /// manifest. Safe to repeat after a crash at any step.
    public static func salvage(_ name: SegmentName, in directory: ArchiveDirectory, blockSize: LZ4BlockSize) throws -> SalvageOutcome {
        precondition(name.isOpen)
        let openPath = directory.path(of: name)
        let sealedPath = directory.path + "/" + name.sealedFileName
        var outcome = SalvageOutcome(openFile: name.openFileName)

        if FileIO.fileSize(sealedPath) != nil {
            // A salvage already renamed its result into place, then stopped.
            let summary = try SegmentReader.summarize(path: sealedPath)
            if summary.read.ending == .complete {
                outcome.alreadySealed = true
                outcome.keptRecords = summary.records
                outcome.sealed = entry(name.sealed, summary, bytes: FileIO.fileSize(sealedPath) ?? 0)
                try FileIO.unlink(openPath)
                try FileIO.syncDirectory(directory.path)
                return outcome
            }
            throw ArchiveError(path: sealedPath, message: "both this and \(name.openFileName) exist and this one is not a complete segment; move one away")
        }

        let temporaryPath = directory.path + "/" + name.base + SegmentName.sealedSuffix + ".salvage"
        let fd = try FileIO.open(temporaryPath, O_WRONLY | O_CREAT | O_TRUNC)
        let summary: SegmentSummary
        let bytes: Int
        do {
            let writer = try LZ4FrameWriter(fd: fd, path: temporaryPath, blockSize: blockSize)
            summary = try SegmentReader(path: openPath).readLines { span in
                try writer.append(span)
                return true
            }
            try writer.finish()
            try FileIO.fsync(fd, path: temporaryPath)
            bytes = writer.bytesWritten
            Glibc.close(fd)
        } catch {
            Glibc.close(fd)
            try? FileIO.unlink(temporaryPath)
            throw error
        }
        outcome.keptRecords = summary.records
        outcome.partialTailBytes = summary.partialTailBytes
        outcome.droppedBytes = max(0, (FileIO.fileSize(openPath) ?? 0) - summary.read.goodBytes)
        outcome.damage = summary.read.damage

        if summary.records > 0 {
            try FileIO.rename(temporaryPath, sealedPath)
            outcome.sealed = entry(name.sealed, summary, bytes: bytes)
        } else {
            try FileIO.unlink(temporaryPath)
        }
        try FileIO.syncDirectory(directory.path)
        if outcome.damage != nil {
            try FileIO.rename(openPath, directory.path + "/" + name.base + SegmentName.sealedSuffix + ".damaged")
        } else {
            try FileIO.unlink(openPath)
        }
        try FileIO.syncDirectory(directory.path)
        return outcome
    }

    /// The manifest entry for a sealed segment, from a pass over its records;
    /// a record without a readable time falls back to the name's stamp.
    public static func entry(_ name: SegmentName, _ summary: SegmentSummary, bytes: Int) -> ManifestEntry {
        let fallback = name.stampNs ?? 0
        return ManifestEntry(
            segment: name.sealedFileName,
            firstTimeNs: summary.firstTimeNs ?? fallback,
            lastTimeNs: summary.lastTimeNs ?? summary.firstTimeNs ?? fallback,
            events: summary.records, bytes: bytes
        )
    }
}

/// The state of an archive directory after ``ArchiveRecovery/recover(_:blockSize:logger:)``.
public struct RecoveredArchive: Sendable {
    /// The manifest's entries, oldest first, as now on disk.
    public var entries: [ManifestEntry]
    /// The sequence number the next segment takes (one past the highest in use).
    public var nextSequence: Int
    /// What each salvage did, oldest first.
    public var salvaged: [SalvageOutcome]
}

/// Brings an archive directory back to a consistent state before a sink
/// writes to it again.
public enum ArchiveRecovery {
    /// Removes temporary files a crash left, salvages every `.open` segment,
    /// adds sealed segments missing from the manifest (a crash between the
    /// rename and the manifest append) and rewrites the manifest atomically if
    /// anything changed or a line of it could not be read. Entries for missing
    /// files are kept (and logged): `archive verify` must still report them.
    public static func recover(_ directory: ArchiveDirectory, blockSize: LZ4BlockSize, logger: Logger) throws -> RecoveredArchive {
        for name in try directory.temporaryFiles() {
            try FileIO.unlink(directory.path + "/" + name)
        }
        let manifest = ArchiveManifest(directory: directory)
        var contents = try manifest.read()
        var changed = !contents.problems.isEmpty
        for problem in contents.problems {
            logger.warning("\(manifest.path):\(problem.line): dropped unreadable line: \(problem.message)")
        }
        // A kept damaged original still holds its sequence number.
        var highest = try directory.damagedFiles().map(\.name.sequence).max() ?? 0
        var salvaged: [SalvageOutcome] = []
        for name in try directory.segments() {
            highest = max(highest, name.sequence)
            guard name.isOpen else { continue }
            let outcome = try SegmentSalvage.salvage(name, in: directory, blockSize: blockSize)
            if outcome.damage != nil {
                logger.error("salvaged \(outcome.summary)")
            } else {
                logger.notice("salvaged \(outcome.summary)")
            }
            salvaged.append(outcome)
        }
        var listed = Set(contents.entries.map(\.segment))
        for entry in contents.entries {
            if let name = SegmentName(fileName: entry.segment) { highest = max(highest, name.sequence) }
        }
        for name in try directory.segments() where !name.isOpen && !listed.contains(name.sealedFileName) {
            if let entry = salvaged.lazy.compactMap(\.sealed).first(where: { $0.segment == name.sealedFileName }) {
                contents.entries.append(entry)
                listed.insert(entry.segment)
                changed = true
                continue
            }
            let path = directory.path(of: name)
            let summary = try SegmentReader.summarize(path: path)
            guard summary.read.ending == .complete else {
                logger.error("\(path): sealed but unreadable (\(summary.read.damage ?? "cut short")); not added to the manifest")
                continue
            }
            contents.entries.append(SegmentSalvage.entry(name, summary, bytes: FileIO.fileSize(path) ?? 0))
            listed.insert(name.sealedFileName)
            changed = true
            logger.notice("\(name.sealedFileName): sealed but not in the manifest; added")
        }
        for entry in contents.entries where FileIO.fileSize(directory.path + "/" + entry.segment) == nil {
            logger.warning("\(entry.segment): listed in the manifest but missing")
        }
        contents.entries.sort { lhs, rhs in
            switch (SegmentName(fileName: lhs.segment), SegmentName(fileName: rhs.segment)) {
            case let (l?, r?): l < r
            default: lhs.segment < rhs.segment
            }
        }
        if changed { try manifest.write(contents.entries) }
        return RecoveredArchive(entries: contents.entries, nextSequence: highest + 1, salvaged: salvaged)
    }
}
