#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import PipelineCore

/// The `file` sink: NDJSON lines to a file or standard output, with rotation
/// by size and age.
///
/// Rotation renames the current file to `PATH.<UTC time>` (for example
/// `events.jsonl.20261124T163413Z`, with `-000001`, `-000002`, ... added if
/// that name is taken, so that names sort in rotation order) and starts a new, empty `PATH`. A record never spans two files.
/// `close()` fsyncs the file so that a clean shutdown leaves it whole on disk.
///
/// A file that stops taking writes (an I/O error, a full disk, a file system
/// gone) does not stop the pipeline: the sink logs one error for the
/// episode, cuts the file back to its last whole line, and counts every
/// record it cannot write as lost `where: sink`. At most every
/// ``retryIntervalNs`` (on writes and on idle) it reopens `path` (appending)
/// and tries again; once a write succeeds it logs the recovery and writes a
/// `lost` record (`where: sink`, `stage`: its id) with what it dropped.
public final class FileSink: EventSink {
    public static let descriptor = StageDescriptor.sink(
        type: "file", summary: "write NDJSON event lines to a file or stdout, rotating by size and age",
        options: FileSinkOptions.self, make: FileSink.init)

    public let options: FileSinkOptions
    // Touched only from the sink's own thread (the EventSink contract).
    private nonisolated(unsafe) var state = State()

    /// How long a refusing file is left alone before the next try.
    static let retryIntervalNs: Int64 = 100_000_000

    private struct State {
        var fd: Int32 = -1
        /// Bytes in the file, as far as whole writes went.
        var size = 0
        var openedAtNs: Int64 = 0
        var buffer: [UInt8] = []
        var metrics: StageMetrics?
        var context: StageContext?
        /// The write failure being waited out, if the file refuses writes now.
        var outage: Outage?
        /// Events counted as lost (`where: sink`) and not yet in a `lost` record.
        var unreportedLost: UInt64 = 0
    }

    /// A file that refuses writes: since when, why, and what was dropped.
    private struct Outage {
        var error: SystemError
        var sinceNs: Int64
        var lastTryNs: Int64
        var dropped: UInt64 = 0
    }

    /// Where unrotated batches are encoded and written from: allocated once,
    /// so lines go straight into memory that is already mapped (growing
    /// `state.buffer` zero-fills it first, a second pass over every byte).
    // Touched only from the sink's own thread (the EventSink contract).
    private nonisolated(unsafe) let output = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)

    private let encoder = NDJSONEncoder()

    public init(_ options: FileSinkOptions) {
        self.options = options
    }

    deinit {
        output.deallocate()
    }

    public func open(_ context: StageContext) throws {
        state.metrics = context.metrics
        state.context = context
        state.buffer.reserveCapacity(1 << 20)
        if options.path == "-" {
            state.fd = STDOUT_FILENO
            return
        }
        try openFile(truncate: !options.append)
    }

    private func openFile(truncate: Bool) throws {
        let fd = try FileIO.open(options.path, O_WRONLY | O_CREAT | (truncate ? O_TRUNC : O_APPEND))
        var info = stat()
        fstat(fd, &info)
        state.fd = fd
        state.size = Int(info.st_size)
        state.openedAtNs = Clock.wallNs()
    }

    /// Writes the batch's lines. While the file refuses writes, what it
    /// cannot write is dropped and counted (see the type's comment).
    public func write(_ batch: EventBatch) throws {
        state.buffer.removeAll(keepingCapacity: true)
        let now = Clock.wallNs()
        guard state.outage == nil || tryAgain(nowNs: now) else { return drop(batch, from: 0) }
        var done = 0
        do {
            try writeLines(batch, done: &done, nowNs: now)
        } catch let error as SystemError {
            refused(error, nowNs: now)
            drop(batch, from: done)
        }
        countWritten(done)
    }

    /// Writes the batch; `done` counts its records that are in the file.
    private func writeLines(_ batch: EventBatch, done: inout Int, nowNs: Int64) throws {
        guard let limit = options.rotateBytes else {
            try rotateIfOld(nowNs: nowNs)
            try writeDirect(batch.records, done: &done)
            return
        }
        try rotateIfOld(nowNs: nowNs)
        for (index, record) in batch.records.enumerated() {
            let lineStart = state.buffer.count
            encoder.encode(record, into: &state.buffer)
            let used = state.size + state.buffer.count
            if used > limit, state.size + lineStart > 0 {
                // This line would cross the limit: flush what precedes it,
                // rotate, and let it start the next file.
                let line = Array(state.buffer[lineStart...])
                state.buffer.removeSubrange(lineStart...)
                try flush()
                done = index
                try rotate()
                state.buffer.append(contentsOf: line)
            }
        }
        try flush()
        done = batch.count
    }

    /// Encodes into ``output`` and writes each time it is full; a record too
    /// large for it (its upper bound, not its line) goes through `buffer`.
    private func writeDirect(_ records: [PipelineRecord], done index: inout Int) throws {
        while index < records.count {
            let (count, bytes) = encoder.encode(records, from: index, into: output)
            if count == 0 {
                encoder.encode(records[index], into: &state.buffer)
                try flush()
                index += 1
                continue
            }
            do throws(SystemError) {
                try FileIO.writeAll(state.fd, UnsafeRawBufferPointer(rebasing: output[0..<bytes]), path: options.path)
            } catch {
                cutBack()
                throw error
            }
            state.size += bytes
            if let metrics = state.metrics { metrics.add(metrics.bytes, UInt64(bytes)) }
            index += count
        }
    }

    /// Records written lines (the stage's `out`), once they are.
    private func countWritten(_ records: Int) {
        if let metrics = state.metrics, records > 0 { metrics.add(metrics.recordsOut, UInt64(records)) }
    }

    /// Counts the batch's records from `index` on as lost `where: sink`; a
    /// `lost` record says so once the file takes writes again.
    private func drop(_ batch: EventBatch, from index: Int) {
        guard index < batch.count else { return }
        let weight = batch.records[index...].reduce(0) { $0 + $1.lossWeight }
        state.metrics?.addLost(weight, at: .sink)
        state.unreportedLost += weight
        state.outage?.dropped += weight
        if let completion = batch.completion {
            completion.hold()
            completion.release(written: false)
        }
    }

    /// A write failed part way: the file is cut back to its last whole line
    /// (best effort: a dead disk may refuse that too; the reopen appends).
    private func cutBack() {
        guard options.path != "-", state.fd >= 0 else { return }
        _ = ftruncate(state.fd, off_t(state.size))
        _ = lseek(state.fd, off_t(state.size), SEEK_SET)
    }

    /// The file refused a write: the episode starts (logged once) or goes on.
    private func refused(_ error: SystemError, nowNs: Int64) {
        state.buffer.removeAll(keepingCapacity: true)
        if state.outage != nil {
            state.outage?.error = error
            state.outage?.lastTryNs = nowNs
            return
        }
        state.outage = Outage(error: error, sinceNs: nowNs, lastTryNs: nowNs)
        state.context?.logger.error(
            "file \(options.path): \(error.message); dropping events, counted as lost where: sink, reopening it and trying again every \(Units.formatDuration(Self.retryIntervalNs))")
    }

    /// During an outage: reopens the file (at most every ``retryIntervalNs``,
    /// or now with `force`) and writes the `lost` record for what was
    /// dropped; true (the outage over) once that is in the file.
    private func tryAgain(nowNs: Int64, force: Bool = false) -> Bool {
        guard let outage = state.outage else { return true }
        guard force || nowNs - outage.lastTryNs >= Self.retryIntervalNs else { return false }
        state.outage?.lastTryNs = nowNs
        do {
            if options.path != "-" {
                if state.fd >= 0 { Glibc.close(state.fd) }
                state.fd = -1
                try openFile(truncate: false)
            }
            if state.unreportedLost > 0, let context = state.context {
                state.buffer.removeAll(keepingCapacity: true)
                encoder.encode(.lost(LostRecord(timeNs: nowNs, count: state.unreportedLost, site: .sink, node: context.node, stage: context.id)), into: &state.buffer)
                try flush()
                state.unreportedLost = 0
                countWritten(1)
            }
        } catch let error as SystemError {
            state.buffer.removeAll(keepingCapacity: true)
            state.outage?.error = error
            return false
        } catch {
            return false
        }
        state.outage = nil
        state.context?.logger.notice(
            "file \(options.path): writing again after \(Units.formatDuration(nowNs - outage.sinceNs)); \(outage.dropped) event(s) dropped meanwhile, counted in a lost record")
        return true
    }

    public func idle(nowNs: Int64) throws {
        guard state.outage == nil || tryAgain(nowNs: nowNs) else { return }
        do {
            try rotateIfOld(nowNs: nowNs)
        } catch let error as SystemError {
            refused(error, nowNs: nowNs)
        }
    }

    private func rotateIfOld(nowNs: Int64) throws {
        guard let age = options.rotateAgeNs, state.size > 0, nowNs - state.openedAtNs >= age else { return }
        try rotate()
    }

    private func flush() throws {
        guard !state.buffer.isEmpty else { return }
        let written = state.buffer.count
        do throws(SystemError) {
            try FileIO.writeAll(state.fd, state.buffer, path: options.path)
        } catch {
            state.buffer.removeAll(keepingCapacity: true)
            cutBack()
            throw error
        }
        state.size += written
        if let metrics = state.metrics { metrics.add(metrics.bytes, UInt64(written)) }
        state.buffer.removeAll(keepingCapacity: true)
    }

    private func rotate() throws {
        guard options.path != "-" else { return }
        fsync(state.fd)
        Glibc.close(state.fd)
        state.fd = -1
        let stamp = UTCDateTime(epochNs: Clock.wallNs()).compact
        var target = "\(options.path).\(stamp)"
        var suffix = 1
        while access(target, F_OK) == 0 {
            target = "\(options.path).\(stamp)-\(String(suffix).leftPadded(to: 6))"
            suffix += 1
        }
        do {
            try FileIO.rename(options.path, target)
        } catch {
            try openFile(truncate: false)
            throw error
        }
        try openFile(truncate: true)
        if let keep = options.keepFiles { removeOldRotations(keep: keep) }
    }

    /// Rotated files sort by name in time order (the UTC stamp leads).
    private func removeOldRotations(keep: Int) {
        let directory = FileIO.directoryOf(options.path)
        let prefix = FileIO.baseName(options.path) + "."
        guard let names = try? FileIO.listDirectory(directory) else { return }
        let rotated = names.filter { $0.hasPrefix(prefix) && $0.count > prefix.count }.sorted()
        for name in rotated.dropLast(keep) { unlink(directory + "/" + name) }
    }

    public func close() throws {
        if state.outage != nil, !tryAgain(nowNs: Clock.wallNs(), force: true), let outage = state.outage {
            state.context?.logger.error(
                "file \(options.path) still refuses writes at close (\(outage.error.message)): the \(state.unreportedLost) event(s) dropped could not be recorded in a lost record (counted in this stage's lost)")
        }
        try flush()
        guard state.fd >= 0, options.path != "-" else { return }
        fsync(state.fd)
        Glibc.close(state.fd)
        state.fd = -1
    }
}

extension String {
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
