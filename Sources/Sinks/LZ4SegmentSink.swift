#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import EventArchive
import Logging
import PipelineCore

/// The `lz4_segments` sink: an archive of LZ4-compressed NDJSON segments with
/// a manifest (docs/archive.md).
///
/// ```
///  write(batch) ─▶ NDJSON ─▶ LZ4 frame (independent blocks, block + content checksums)
///                               │ a block is written when full, or on idle / flush_interval
///                               ▼
///   DIR/<id>-<first time>-<seq>.jsonl.lz4.open
///                               │ seal (size, age, close): end mark + checksum, fsync,
///                               ▼ rename, fsync DIR, then a manifest line (fsynced)
///   DIR/<id>-<first time>-<seq>.jsonl.lz4   +   DIR/manifest.jsonl
///                               │ retention (bytes, age): manifest rewritten first
///                               ▼ (atomically), then the oldest files removed
/// ```
///
/// A segment is started by the first record after the previous one was sealed
/// and named after that record's time; the sequence continues after the
/// highest one in the directory. On ``open(_:)`` the directory is recovered:
/// each `.open` segment a crash left is salvaged (every whole record of every
/// complete block, into a new valid frame), sealed and logged, and sealed
/// segments a crash kept out of the manifest are added to it.
///
/// A batch counts as written for its ``BatchCompletion`` (a `nats` source
/// acknowledges it then) only once its records are in a block written to
/// the file, which salvage keeps after a crash, not while they wait in the
/// block being filled (at most `flush_interval`).
///
/// A disk that refuses writes (full, or failing) does not stop the pipeline:
/// the sink logs one error for the episode (the directory, the errno, the
/// free space), keeps the `.open` segment a whole-block prefix (a block the
/// disk refused waits in memory), and drops every later batch, counting it
/// as lost `where: sink`. With `retention_bytes` set, a full disk first makes
/// the sink remove its oldest sealed segments, one at a time, until the write
/// fits. It tries again at most every ``retryIntervalNs`` (on writes and on
/// idle); once a write succeeds it logs the recovery and writes a `lost`
/// record (`where: sink`, `stage`: its id) with what it dropped. What is
/// still unwritten at close is counted as lost and logged; the `.open`
/// segment stays, and the next start salvages it.
///
/// `segment_bytes` is compared with the compressed bytes written, checked
/// after every batch: a segment can pass it by one batch and one block.
/// One writer per directory: ``open(_:)`` takes an exclusive `flock` on it.
/// Every method runs on the sink's own thread (fsync blocks).
public final class LZ4SegmentSink: EventSink {
    public static let descriptor = StageDescriptor.sink(
        type: "lz4_segments", summary: "archive NDJSON in LZ4-framed segments with a manifest, rotation and retention",
        options: LZ4SegmentSinkOptions.self, make: LZ4SegmentSink.init)

    public let options: LZ4SegmentSinkOptions
    private let directory: ArchiveDirectory
    private let manifest: ArchiveManifest
    private let encoder = NDJSONEncoder()
    // Touched only from the sink's own thread (the EventSink contract), one call at a time.
    private nonisolated(unsafe) var state = State()

    /// How long a refusing disk is left alone before the next try.
    static let retryIntervalNs: Int64 = 100_000_000

    private struct State {
        var context: StageContext?
        /// The write failure being waited out, if the disk refuses writes now.
        var outage: Outage?
        /// Events counted as lost (`where: sink`) and not yet in a `lost` record.
        var unreportedLost: UInt64 = 0
        /// `raw_bytes`, `segments_open`, `segments_sealed`: declared in open.
        var counts: ArchiveCounts?
        var entries: [ManifestEntry] = []
        var nextSequence = 1
        var current: Segment?
        var buffer: [UInt8] = []
        /// The archive directory, open and flock-ed while the sink runs.
        var lockFD: Int32 = -1
    }

    /// A disk that refuses writes: since when, why, and what was dropped.
    private struct Outage {
        var error: SystemError
        var sinceNs: Int64
        var lastTryNs: Int64
        var dropped: UInt64 = 0
    }

    /// How far sealing a segment has got, so that a refused step resumes
    /// where it stopped.
    private enum SealStep {
        /// Being written; not being sealed.
        case writing
        /// The frame is being ended and fsynced.
        case ending
        /// Ended, fsynced and closed; to be renamed.
        case closed
        /// Renamed to the sealed name; to be added to the manifest.
        case renamed
    }

    /// The segment being written.
    private final class Segment {
        let name: SegmentName
        let fd: Int32
        let writer: LZ4FrameWriter
        let startedAtNs: Int64
        let firstTimeNs: Int64
        var lastTimeNs: Int64
        var records = 0
        var lastBlockAtNs: Int64
        var reportedBytes = 0
        var step = SealStep.writing
        /// Batches whose records are (partly) not yet in the file (in the
        /// block being filled, or refused by the disk), with the content
        /// offset their records end at and the events they stand for; their
        /// completions are released once a block or the frame's end has
        /// written them.
        var held: [(completion: BatchCompletion?, end: Int, records: Int, weight: UInt64)] = []

        init(name: SegmentName, fd: Int32, writer: LZ4FrameWriter, startedAtNs: Int64, firstTimeNs: Int64) {
            self.name = name
            self.fd = fd
            self.writer = writer
            self.startedAtNs = startedAtNs
            self.firstTimeNs = firstTimeNs
            self.lastTimeNs = firstTimeNs
            self.lastBlockAtNs = startedAtNs
        }
    }

    /// A sink with these options; nothing is touched on disk until ``open(_:)``.
    public init(_ options: LZ4SegmentSinkOptions) {
        self.options = options
        directory = ArchiveDirectory(options.directory)
        manifest = ArchiveManifest(directory: directory)
    }

    /// Creates and locks the directory, recovers what a crash left (salvage,
    /// manifest repair) and applies retention. Throws an ``ArchiveError`` when
    /// the directory cannot be created or is locked by another writer, and
    /// what recovery throws when that fails.
    public func open(_ context: StageContext) throws {
        state.context = context
        state.counts = ArchiveCounts(context.metrics)
        do throws(SystemError) {
            try FileIO.makeDirectories(options.directory)
        } catch {
            throw ArchiveError(error)
        }
        try lockDirectory()
        let recovered = try ArchiveRecovery.recover(directory, blockSize: options.blockSize, logger: context.logger)
        state.entries = recovered.entries
        state.nextSequence = recovered.nextSequence
        state.buffer.reserveCapacity(1 << 20)
        try applyRetention(nowNs: Clock.wallNs())
    }

    /// Appends the batch to the current segment (starting one named after the
    /// batch's first record if needed); seals it when it is old or big enough.
    /// While the disk refuses writes the batch is dropped and counted (see
    /// the type's comment); only an error that is not the disk's is thrown.
    public func write(_ batch: EventBatch) throws {
        guard !batch.records.isEmpty else { return }
        let now = Clock.wallNs()
        guard state.outage == nil || tryAgain(nowNs: now) else { return drop(batch) }
        var taken = false
        do {
            try append(batch, nowNs: now, taken: &taken)
        } catch let error as SystemError {
            refused(error, nowNs: now)
            guard !taken else { return }
            guard state.outage == nil else { return drop(batch) }
            // Retention made room: the batch goes in after all.
            do {
                try append(batch, nowNs: now, taken: &taken)
            } catch let error as SystemError {
                refused(error, nowNs: now)
                if !taken { drop(batch) }
            }
        }
    }

    /// Writes the batch into the current segment; `taken` turns true once
    /// the segment holds it (in the file, a block being filled, or the
    /// backlog). `weight` is what it counts as lost if it is never written
    /// (the sink's own `lost` record: nothing, its count is counted already).
    private func append(_ batch: EventBatch, nowNs now: Int64, taken: inout Bool, weight: UInt64? = nil) throws {
        // A seal the disk interrupted is finished before anything new goes in.
        if let segment = state.current, segment.step != .writing || now - segment.startedAtNs >= options.segmentAgeNs {
            try seal()
        }
        let segment = try state.current ?? startSegment(firstTimeNs: batch.records[0].timeNs, nowNs: now)
        state.buffer.removeAll(keepingCapacity: true)
        encoder.encode(batch, into: &state.buffer)
        state.counts?.rawBytes.add(UInt64(state.buffer.count))
        let blocksBefore = segment.writer.bytesWritten
        batch.completion?.hold()
        segment.records += batch.count
        segment.lastTimeNs = batch.records[batch.count - 1].timeNs
        if let metrics = state.context?.metrics { metrics.add(metrics.recordsOut, UInt64(batch.count)) }
        taken = true
        let weight = weight ?? batch.lossWeight
        do {
            try segment.writer.append(state.buffer)
        } catch {
            segment.held.append((batch.completion, segment.writer.contentBytes, batch.count, weight))
            report(segment)
            throw error
        }
        segment.held.append((batch.completion, segment.writer.contentBytes, batch.count, weight))
        if segment.writer.bytesWritten != blocksBefore {
            segment.lastBlockAtNs = now
        } else if now - segment.lastBlockAtNs >= options.flushIntervalNs {
            segment.lastBlockAtNs = now
            try segment.writer.flush()
        }
        report(segment)
        releaseStored(segment)
        if segment.writer.bytesWritten >= options.segmentBytes {
            try seal()
        }
    }

    /// Counts a batch the sink cannot take as lost `where: sink`; a `lost`
    /// record says so once the disk takes writes again.
    private func drop(_ batch: EventBatch) {
        let weight = batch.lossWeight
        state.context?.metrics.addLost(weight, at: .sink)
        state.unreportedLost += weight
        state.outage?.dropped += weight
        if let completion = batch.completion {
            completion.hold()
            completion.release(written: false)
        }
    }

    /// The disk refused a write: the episode starts (logged once) or goes
    /// on. A full disk with `retention_bytes` set first makes room, if it
    /// can: then there is no episode (``State/outage`` is nil again).
    private func refused(_ error: SystemError, nowNs: Int64) {
        if state.outage != nil {
            state.outage?.error = error
            state.outage?.lastTryNs = nowNs
            return
        }
        state.outage = Outage(error: error, sinceNs: nowNs, lastTryNs: nowNs)
        if Self.isFull(error), options.retentionBytes != nil, makeRoom(), tryAgain(nowNs: nowNs, force: true, announce: false) { return }
        state.context?.logger.error(
            "archive \(options.directory): \(error) (\(Self.freeSpace(options.directory))); dropping events, counted as lost where: sink, until a write succeeds (tried again every \(Units.formatDuration(Self.retryIntervalNs)))")
    }

    /// `N bytes free of SIZE` for the directory's file system.
    static func freeSpace(_ directory: String) -> String {
        var info = statvfs()
        guard statvfs(directory, &info) == 0 else { return "free space unknown" }
        let free = Int(info.f_bavail) * Int(info.f_frsize)
        let size = Int(info.f_blocks) * Int(info.f_frsize)
        return "\(free) bytes free of \(Units.formatSize(size))"
    }

    /// During an outage: tries again (at most every ``retryIntervalNs``, or
    /// now with `force`) what the disk refused, then the `lost` record for
    /// what was dropped, making room with retention when that is allowed;
    /// true (the outage over) once both are in.
    private func tryAgain(nowNs: Int64, force: Bool = false, announce: Bool = true) -> Bool {
        guard let outage = state.outage else { return true }
        guard force || nowNs - outage.lastTryNs >= Self.retryIntervalNs else { return false }
        state.outage?.lastTryNs = nowNs
        while true {
            do {
                try resume(nowNs: nowNs)
                if state.unreportedLost > 0, let context = state.context {
                    let lost = LostRecord(timeNs: nowNs, count: state.unreportedLost, site: .sink, node: context.node, stage: context.id)
                    var taken = false
                    defer { if taken { state.unreportedLost = 0 } }
                    try append(EventBatch([.lost(lost)]), nowNs: nowNs, taken: &taken, weight: 0)
                }
                break
            } catch let error as SystemError {
                state.outage?.error = error
                if Self.isFull(error), makeRoom() { continue }
                return false
            } catch {
                return false
            }
        }
        state.outage = nil
        if announce {
            state.context?.logger.notice(
                "archive \(options.directory): writing again after \(Units.formatDuration(nowNs - outage.sinceNs)); \(outage.dropped) event(s) dropped meanwhile, counted in a lost record")
        }
        return true
    }

    /// Finishes what the disk refused: the segment's backlog, a seal that stopped part way.
    private func resume(nowNs: Int64) throws {
        guard let segment = state.current else { return }
        try segment.writer.writeBacklog()
        report(segment)
        releaseStored(segment)
        if segment.step != .writing { try seal(nowNs: nowNs) }
    }

    static func isFull(_ error: SystemError) -> Bool { error.errno == ENOSPC || error.errno == EDQUOT }

    /// On a full disk with `retention_bytes` set: removes the oldest sealed
    /// segment to make room. The manifest is rewritten first as usual; when
    /// even that does not fit, the file goes first (a crash in between leaves
    /// a manifest line for a missing file, which `archive verify` reports).
    private func makeRoom() -> Bool {
        guard options.retentionBytes != nil, let oldest = state.entries.first else { return false }
        let kept = Array(state.entries.dropFirst())
        let path = directory.path + "/" + oldest.segment
        do {
            do {
                try manifest.write(kept)
                try FileIO.unlink(path)
            } catch let error as SystemError where Self.isFull(error) {
                try FileIO.unlink(path)
                try manifest.write(kept)
            }
        } catch {
            state.context?.logger.error("archive \(options.directory): cannot remove \(oldest.segment) to make room: \(error)")
            return false
        }
        state.entries = kept
        state.context?.logger.warning("archive \(options.directory) is full: retention removed the oldest segment \(oldest.segment) (\(oldest.bytes) bytes, \(oldest.events) events) to make room")
        return true
    }

    /// Releases the completions whose records are all in written blocks (a
    /// crash now keeps them: salvage reads every complete block).
    private func releaseStored(_ segment: Segment) {
        let stored = segment.writer.storedContentBytes
        var count = 0
        while count < segment.held.count, segment.held[count].end <= stored {
            segment.held[count].completion?.release(written: true)
            count += 1
        }
        segment.held.removeFirst(count)
    }

    /// Releases every completion still held, once the frame is finished (or could not be).
    private func releaseAll(_ segment: Segment, written: Bool) {
        for entry in segment.held { entry.completion?.release(written: written) }
        segment.held.removeAll()
    }

    /// Seals a segment older than `segment_age`, else writes what is gathered
    /// as a block so that readers of the `.open` file see it; applies retention by age.
    public func idle(nowNs: Int64) throws {
        guard state.outage == nil || tryAgain(nowNs: nowNs) else { return }
        do {
            if let segment = state.current {
                if nowNs - segment.startedAtNs >= options.segmentAgeNs {
                    try seal(nowNs: nowNs)
                } else if segment.writer.pendingBytes > 0 {
                    // Nothing is arriving: make what is gathered readable in the .open file.
                    defer {
                        report(segment)
                        releaseStored(segment)
                    }
                    try segment.writer.flush()
                    segment.lastBlockAtNs = nowNs
                }
            }
            if options.retentionAgeNs != nil { try applyRetention(nowNs: nowNs) }
        } catch let error as SystemError {
            refused(error, nowNs: nowNs)
        }
    }

    /// Seals the current segment and releases the directory lock. When the
    /// disk still refuses writes, what is not in the file is counted as lost
    /// and logged, and the `.open` segment is left for the next start's salvage.
    public func close() throws {
        defer {
            if state.lockFD >= 0 { Glibc.close(state.lockFD) }
            state.lockFD = -1
        }
        let now = Clock.wallNs()
        // Twice: a refusal may end at once, when retention makes room.
        for _ in 0..<2 where state.outage == nil || tryAgain(nowNs: now, force: true) {
            do {
                try seal(nowNs: now)
                return
            } catch let error as SystemError {
                refused(error, nowNs: now)
            }
        }
        giveUp()
    }

    /// At close, the disk still refusing: counts what is not in the file as lost.
    private func giveUp() {
        guard let outage = state.outage else { return }
        var unwritten: UInt64 = 0
        if let segment = state.current {
            if segment.step == .writing || segment.step == .ending {
                unwritten = unwrittenWeight(segment)
                releaseAll(segment, written: false)
                Glibc.close(segment.fd)
            }
            state.current = nil
            state.counts?.open.set(0)
        }
        state.context?.metrics.addLost(unwritten, at: .sink)
        state.context?.logger.error(
            "archive \(options.directory) still refuses writes at close (\(outage.error)): \(unwritten) event(s) not written, counted as lost; \(state.unreportedLost) event(s) dropped earlier could not be recorded in a lost record (counted in this stage's lost); the .open segment (if any) is salvaged on the next start")
    }

    /// What the held batches stand for, less the whole records of theirs
    /// that are in the file after all (the first one may be partly in a
    /// written block: salvage keeps those). A batch cut there that carries a
    /// `lost` record is counted as if its records were one event each.
    private func unwrittenWeight(_ segment: Segment) -> UInt64 {
        let heldRecords = segment.held.reduce(0) { $0 + $1.records }
        let inFile = (try? SegmentReader.summarize(path: directory.path(of: segment.name)).records) ?? 0
        var heldInFile = max(0, inFile - (segment.records - heldRecords))
        var unwritten: UInt64 = 0
        for entry in segment.held {
            let kept = min(heldInFile, entry.records)
            heldInFile -= kept
            unwritten += entry.weight - min(entry.weight, UInt64(kept))
        }
        return unwritten
    }

    /// Takes an exclusive lock on the directory, so that a second writer (another
    /// sink, or another pipelined) cannot salvage this one's `.open` segment or
    /// apply its retention to this one's files. The kernel drops the lock when
    /// the process dies, so a crash never leaves the archive locked.
    private func lockDirectory() throws(ArchiveError) {
        let fd: Int32
        do throws(SystemError) {
            fd = try FileIO.open(options.directory, O_RDONLY | O_DIRECTORY)
        } catch {
            throw ArchiveError(error)
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let code = errno
            Glibc.close(fd)
            if code == EWOULDBLOCK {
                throw ArchiveError(path: options.directory, message: "in use by another lz4_segments writer (the directory is locked)")
            }
            throw ArchiveError(SystemError("cannot lock", code, path: options.directory))
        }
        state.lockFD = fd
    }

    // MARK: Segments

    private func startSegment(firstTimeNs: Int64, nowNs: Int64) throws -> Segment {
        var attempts = 0
        while true {
            let name = SegmentName(sinkID: state.context?.id ?? "archive", firstTimeNs: firstTimeNs, sequence: state.nextSequence)
            state.nextSequence += 1
            let path = directory.path(of: name)
            let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
            if fd < 0 {
                // Someone else's file with this sequence: take the next one.
                if errno == EEXIST, attempts < 1000 {
                    attempts += 1
                    continue
                }
                throw SystemError("cannot create segment", errno, path: path)
            }
            do {
                let writer = try LZ4FrameWriter(fd: fd, path: path, blockSize: options.blockSize)
                let segment = Segment(name: name, fd: fd, writer: writer, startedAtNs: nowNs, firstTimeNs: firstTimeNs)
                state.current = segment
                state.counts?.open.set(1)
                report(segment)
                return segment
            } catch {
                // Not even the header fitted: leave no empty file behind.
                Glibc.close(fd)
                unlink(path)
                throw error
            }
        }
    }

    /// Ends the frame, fsyncs, renames to the sealed name, fsyncs the
    /// directory, then appends the manifest line: a crash at any point leaves
    /// either an `.open` segment (salvaged on the next start) or a sealed one
    /// that recovery adds to the manifest. A step the disk refuses throws and
    /// is resumed by the next call (``Segment/step``); the ``Failpoint``s
    /// between the steps are the crash tests' hooks.
    private func seal(nowNs: Int64 = Clock.wallNs()) throws {
        guard let segment = state.current else { return }
        let openPath = directory.path(of: segment.name)
        let sealedName = segment.name.sealed
        if segment.step == .writing || segment.step == .ending {
            segment.step = .ending
            try segment.writer.writeBacklog()
            try segment.writer.finish()
            report(segment)
            Failpoint.sealBeforeFsync.pass()
            try FileIO.fsync(segment.fd, path: openPath)
            releaseAll(segment, written: true)
            Glibc.close(segment.fd)
            segment.step = .closed
        }
        if segment.step == .closed {
            Failpoint.sealBeforeRename.pass()
            try FileIO.rename(openPath, directory.path(of: sealedName))
            segment.step = .renamed
            Failpoint.sealAfterRename.pass()
        }
        try FileIO.syncDirectory(directory.path)
        let entry = ManifestEntry(
            segment: sealedName.sealedFileName, firstTimeNs: segment.firstTimeNs, lastTimeNs: segment.lastTimeNs,
            events: segment.records, bytes: segment.writer.bytesWritten
        )
        try manifest.append(entry)
        state.current = nil
        state.counts?.open.set(0)
        state.counts?.sealed.add()
        state.entries.append(entry)
        state.context?.logger.debug("sealed \(entry.segment): \(entry.events) records, \(entry.bytes) bytes")
        try applyRetention(nowNs: nowNs)
    }

    /// Counts newly written compressed bytes in the stage's metrics.
    private func report(_ segment: Segment) {
        let written = segment.writer.bytesWritten
        if let metrics = state.context?.metrics, written > segment.reportedBytes {
            metrics.add(metrics.bytes, UInt64(written - segment.reportedBytes))
        }
        segment.reportedBytes = written
    }

    // MARK: Retention

    /// Removes the oldest sealed segments while the archive (sealed segments
    /// plus the one being written) is over `retention_bytes`, and every sealed
    /// segment whose last record is older than `retention_age`. The manifest is
    /// rewritten first, so that it never lists a file that is gone; a crash
    /// before the files are removed leaves unlisted segments, which the next
    /// start adds back (and retention then removes again).
    private func applyRetention(nowNs: Int64) throws {
        guard options.retentionBytes != nil || options.retentionAgeNs != nil, !state.entries.isEmpty else { return }
        var removed: [ManifestEntry] = []
        var kept = state.entries
        if let age = options.retentionAgeNs {
            let cutoff = nowNs - age
            removed += kept.filter { $0.lastTimeNs < cutoff }
            kept.removeAll { $0.lastTimeNs < cutoff }
        }
        if let limit = options.retentionBytes {
            var total = kept.reduce(state.current?.writer.bytesWritten ?? 0) { $0 + $1.bytes }
            while total > limit, !kept.isEmpty {
                let oldest = kept.removeFirst()
                total -= oldest.bytes
                removed.append(oldest)
            }
        }
        guard !removed.isEmpty else { return }
        try manifest.write(kept)
        state.entries = kept
        for entry in removed {
            try FileIO.unlink(directory.path + "/" + entry.segment)
        }
        try FileIO.syncDirectory(directory.path)
        let bytes = removed.reduce(0) { $0 + $1.bytes }
        state.context?.logger.info("retention removed \(removed.count) segment(s), \(bytes) bytes")
    }
}

/// The archive sink's own series (`bytes`, the common counter, counts the
/// compressed bytes written).
struct ArchiveCounts {
    /// NDJSON bytes before compression.
    let rawBytes: StageMetrics.Counter
    /// Segments being written now (0 or 1).
    let open: StageMetrics.Gauge
    /// Segments sealed since the sink opened.
    let sealed: StageMetrics.Counter

    init(_ metrics: StageMetrics) {
        rawBytes = metrics.counter("raw_bytes", help: "NDJSON bytes before LZ4 compression")
        open = metrics.gauge("segments_open", help: "segments being written now")
        sealed = metrics.counter("segments_sealed", help: "segments sealed since the sink opened")
    }
}
