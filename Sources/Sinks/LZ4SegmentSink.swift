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

    private struct State {
        var context: StageContext?
        /// `raw_bytes`, `segments_open`, `segments_sealed`: declared in open.
        var counts: ArchiveCounts?
        var entries: [ManifestEntry] = []
        var nextSequence = 1
        var current: Segment?
        var buffer: [UInt8] = []
        /// The archive directory, open and flock-ed while the sink runs.
        var lockFD: Int32 = -1
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
        /// Completions of batches whose records are (partly) still in the
        /// block being filled, with the content offset their records end at:
        /// they are released once a block or the frame's end has written them.
        var held: [(completion: BatchCompletion, end: Int)] = []

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
    public func write(_ batch: EventBatch) throws {
        guard let first = batch.records.first else { return }
        let now = Clock.wallNs()
        if let segment = state.current, now - segment.startedAtNs >= options.segmentAgeNs {
            try seal()
        }
        let segment = try state.current ?? startSegment(firstTimeNs: first.timeNs, nowNs: now)
        state.buffer.removeAll(keepingCapacity: true)
        encoder.encode(batch, into: &state.buffer)
        state.counts?.rawBytes.add(UInt64(state.buffer.count))
        let blocksBefore = segment.writer.bytesWritten
        try segment.writer.append(state.buffer)
        if let completion = batch.completion {
            completion.hold()
            segment.held.append((completion, segment.writer.contentBytes))
        }
        segment.records += batch.count
        if let metrics = state.context?.metrics { metrics.add(metrics.recordsOut, UInt64(batch.count)) }
        segment.lastTimeNs = batch.records[batch.count - 1].timeNs
        if segment.writer.bytesWritten != blocksBefore {
            segment.lastBlockAtNs = now
        } else if now - segment.lastBlockAtNs >= options.flushIntervalNs {
            try segment.writer.flush()
            segment.lastBlockAtNs = now
        }
        report(segment)
        releaseStored(segment)
        if segment.writer.bytesWritten >= options.segmentBytes {
            try seal()
        }
    }

    /// Releases the completions whose records are all in written blocks (a
    /// crash now keeps them: salvage reads every complete block).
    private func releaseStored(_ segment: Segment) {
        let stored = segment.writer.contentBytes - segment.writer.pendingBytes
        var count = 0
        while count < segment.held.count, segment.held[count].end <= stored {
            segment.held[count].completion.release(written: true)
            count += 1
        }
        segment.held.removeFirst(count)
    }

    /// Releases every completion still held, once the frame is finished (or could not be).
    private func releaseAll(_ segment: Segment, written: Bool) {
        for entry in segment.held { entry.completion.release(written: written) }
        segment.held.removeAll()
    }

    /// Seals a segment older than `segment_age`, else writes what is gathered
    /// as a block so that readers of the `.open` file see it; applies retention by age.
    public func idle(nowNs: Int64) throws {
        if let segment = state.current {
            if nowNs - segment.startedAtNs >= options.segmentAgeNs {
                try seal(nowNs: nowNs)
            } else if segment.writer.pendingBytes > 0 {
                // Nothing is arriving: make what is gathered readable in the .open file.
                try segment.writer.flush()
                segment.lastBlockAtNs = nowNs
                report(segment)
                releaseStored(segment)
            }
        }
        if options.retentionAgeNs != nil { try applyRetention(nowNs: nowNs) }
    }

    /// Seals the current segment and releases the directory lock.
    public func close() throws {
        defer {
            if state.lockFD >= 0 { Glibc.close(state.lockFD) }
            state.lockFD = -1
        }
        if state.current != nil { try seal() }
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
                Glibc.close(fd)
                throw error
            }
        }
    }

    /// Ends the frame, fsyncs, renames to the sealed name, fsyncs the
    /// directory, then appends the manifest line: a crash at any point leaves
    /// either an `.open` segment (salvaged on the next start) or a sealed one
    /// that recovery adds to the manifest.
    private func seal(nowNs: Int64 = Clock.wallNs()) throws {
        guard let segment = state.current else { return }
        state.current = nil
        state.counts?.open.set(0)
        let openPath = directory.path(of: segment.name)
        let sealedName = segment.name.sealed
        do {
            try segment.writer.finish()
            report(segment)
            try FileIO.fsync(segment.fd, path: openPath)
        } catch {
            Glibc.close(segment.fd)
            releaseAll(segment, written: false)
            throw error
        }
        releaseAll(segment, written: true)
        Glibc.close(segment.fd)
        try FileIO.rename(openPath, directory.path(of: sealedName))
        try FileIO.syncDirectory(directory.path)
        let entry = ManifestEntry(
            segment: sealedName.sealedFileName, firstTimeNs: segment.firstTimeNs, lastTimeNs: segment.lastTimeNs,
            events: segment.records, bytes: segment.writer.bytesWritten
        )
        try manifest.append(entry)
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
