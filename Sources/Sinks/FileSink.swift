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
public final class FileSink: EventSink {
    public static let descriptor = StageDescriptor.sink(
        type: "file", summary: "write NDJSON event lines to a file or stdout, rotating by size and age",
        options: FileSinkOptions.self, make: FileSink.init)

    public let options: FileSinkOptions
    // Touched only from the sink's own thread (the EventSink contract).
    private nonisolated(unsafe) var state = State()

    private struct State {
        var fd: Int32 = -1
        var size = 0
        var openedAtNs: Int64 = 0
        var buffer: [UInt8] = []
        var metrics: StageMetrics?
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

    public func write(_ batch: EventBatch) throws {
        state.buffer.removeAll(keepingCapacity: true)
        guard let limit = options.rotateBytes else {
            try rotateIfOld(nowNs: Clock.wallNs())
            try writeDirect(batch.records)
            countWritten(batch)
            return
        }
        try rotateIfOld(nowNs: Clock.wallNs())
        for record in batch.records {
            let lineStart = state.buffer.count
            encoder.encode(record, into: &state.buffer)
            let used = state.size + state.buffer.count
            if used > limit, state.size + lineStart > 0 {
                // This line would cross the limit: flush what precedes it,
                // rotate, and let it start the next file.
                let line = Array(state.buffer[lineStart...])
                state.buffer.removeSubrange(lineStart...)
                try flush()
                try rotate()
                state.buffer.append(contentsOf: line)
            }
        }
        try flush()
        countWritten(batch)
    }

    /// Encodes into ``output`` and writes each time it is full; a record too
    /// large for it (its upper bound, not its line) goes through `buffer`.
    private func writeDirect(_ records: [PipelineRecord]) throws {
        var index = 0
        while index < records.count {
            let (count, bytes) = encoder.encode(records, from: index, into: output)
            if count == 0 {
                encoder.encode(records[index], into: &state.buffer)
                try flush()
                index += 1
                continue
            }
            try FileIO.writeAll(state.fd, UnsafeRawBufferPointer(rebasing: output[0..<bytes]), path: options.path)
            state.size += bytes
            if let metrics = state.metrics { metrics.add(metrics.bytes, UInt64(bytes)) }
            index += count
        }
    }

    /// Records a batch as written (the stage's `out`), once it is.
    private func countWritten(_ batch: EventBatch) {
        if let metrics = state.metrics { metrics.add(metrics.recordsOut, UInt64(batch.count)) }
    }

    public func idle(nowNs: Int64) throws {
        try rotateIfOld(nowNs: nowNs)
    }

    private func rotateIfOld(nowNs: Int64) throws {
        guard let age = options.rotateAgeNs, state.size > 0, nowNs - state.openedAtNs >= age else { return }
        try rotate()
    }

    private func flush() throws {
        guard !state.buffer.isEmpty else { return }
        let written = state.buffer.count
        try FileIO.writeAll(state.fd, state.buffer, path: options.path)
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
