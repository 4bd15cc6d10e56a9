#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Atomics
import EventArchive
import Logging
import PipelineCore

/// The `replay` source: reads event records written by pipelined (NDJSON,
/// plain or in `lz4_segments` segments) and pushes them down the pipeline,
/// optionally at a fixed rate. Lines that are not event records are counted as
/// malformed and skipped; a damaged segment is read up to the damage, logged,
/// and the next one follows.
public final class ReplaySource: EventSource {
    public static let descriptor = StageDescriptor.source(
        type: "replay", summary: "replay NDJSON event records from a file, a segment or an archive directory, optionally at a fixed rate",
        options: ReplaySourceOptions.self, make: ReplaySource.init)

    public let options: ReplaySourceOptions
    private let stopped = ManagedAtomic<Bool>(false)
    // Set in prepare, read in run; both on the runtime's threads in sequence.
    private nonisolated(unsafe) var fd: Int32 = -1
    private nonisolated(unsafe) var context: StageContext?
    /// The segment files to read, oldest first; nil for plain NDJSON on `fd`.
    private nonisolated(unsafe) var segments: [String]?
    /// Read and write ends of a pipe that ``stop()`` writes to, so that a read
    /// waiting on a FIFO or on standard input returns at once. Open for the
    /// source's whole life: `stop()` may come after `run` has returned.
    private let wake: (read: Int32, write: Int32)

    public init(_ options: ReplaySourceOptions) {
        self.options = options
        var ends: [Int32] = [-1, -1]
        if pipe(&ends) == 0 {
            for end in ends {
                _ = fcntl(end, F_SETFD, FD_CLOEXEC)
                _ = fcntl(end, F_SETFL, O_NONBLOCK)
            }
        } else {
            ends = [-1, -1]
        }
        wake = (ends[0], ends[1])
    }

    deinit {
        if wake.read >= 0 { Glibc.close(wake.read) }
        if wake.write >= 0 { Glibc.close(wake.write) }
    }

    public func prepare(_ context: StageContext) throws {
        self.context = context
        if options.path == "-" {
            fd = STDIN_FILENO
            return
        }
        if FileIO.isDirectory(options.path) {
            let archive = ArchiveDirectory(options.path)
            do {
                segments = try archive.segments().map { archive.path(of: $0) }
            } catch {
                throw StageStartError(stage: context.id, message: "\(error)")
            }
            if segments!.isEmpty { context.logger.warning("\(options.path): no segments to replay") }
            return
        }
        // Non-blocking, so that a FIFO without a writer yet does not hold up
        // the start; `run` waits for its data (LineReader).
        fd = Glibc.open(options.path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else {
            throw StageStartError(stage: context.id, message: SystemError("cannot open", errno, path: options.path).description)
        }
        if SegmentReader.isSegment(path: options.path) {
            Glibc.close(fd)
            fd = -1
            segments = [options.path]
        }
    }

    public func stop() {
        stopped.store(true, ordering: .releasing)
        if wake.write >= 0 {
            var byte: UInt8 = 1
            _ = Glibc.write(wake.write, &byte, 1)
        }
    }

    public func run(_ output: SourceOutput) throws {
        guard let context else { return }
        defer {
            if fd > STDIN_FILENO { Glibc.close(fd) }
            fd = -1
        }
        let decoder = NDJSONDecoder()
        var batch: [PipelineRecord] = []
        batch.reserveCapacity(output.batchEvents)
        var pacer = options.rate.map { Pacer(rate: $0) }
        var lineNumber = 0
        var reported = 0
        let maxBatch = pacer.map { min(output.batchEvents, max(1, Int($0.rate / 20))) } ?? output.batchEvents

        /// Sends the batch, at the configured rate.
        func flush() {
            guard !batch.isEmpty else { return }
            if pacer != nil { pacer!.wait(for: batch.count, stopped: stopped) }
            output.emit(EventBatch(batch))
            batch.removeAll(keepingCapacity: true)
        }

        var currentPath = options.path

        /// Decodes one line into the batch, and sends the batch when full;
        /// false once the source is asked to stop.
        func handle(_ line: UnsafeRawBufferPointer) -> Bool {
            lineNumber += 1
            if !line.isEmpty {
                context.metrics.add(context.metrics.bytes, UInt64(line.count + 1))
                do {
                    batch.append(try decoder.decode(line))
                } catch {
                    context.metrics.add(context.metrics.malformed, 1)
                    if reported < 10 {
                        reported += 1
                        context.logger.warning("\(currentPath):\(lineNumber): skipped: \(error)")
                    }
                }
            }
            if batch.count >= maxBatch { flush() }
            return !stopped.load(ordering: .relaxed)
        }

        if let segments {
            for path in segments where !stopped.load(ordering: .relaxed) {
                currentPath = path
                lineNumber = 0
                let summary: SegmentSummary
                do {
                    summary = try SegmentReader(path: path).forEachLine(handle)
                } catch {
                    // A segment retention removed meanwhile, or unreadable: go on.
                    context.logger.error("\(error)")
                    continue
                }
                if let damage = summary.read.damage {
                    context.logger.error("\(path): damaged: \(damage); replayed the \(summary.records) record(s) before it")
                } else if summary.read.ending == .truncated, !path.hasSuffix(SegmentName.openSuffix) {
                    context.logger.error("\(path): cut short; replayed the \(summary.records) record(s) of its complete blocks")
                }
            }
        } else {
            var reader = LineReader(fd: fd, wake: wake.read)
            while !stopped.load(ordering: .relaxed) {
                var keepGoing = true
                // Before waiting on a live stream, what it sent so far goes on.
                let more = try reader.nextLine(idle: flush) { line in keepGoing = handle(line) }
                if !more || !keepGoing { break }
            }
        }
        flush()
        let malformed = context.metrics.malformed.load(ordering: .relaxed)
        if malformed > 0 {
            context.logger.warning("\(malformed) malformed line(s) skipped in \(options.path)")
        }
    }
}

/// Splits a file descriptor's bytes into lines, reading 1 MiB at a time.
///
/// A regular file is read straight through. Anything else (a FIFO, a pipe on
/// standard input, a terminal) is waited on with poll(2) beside `wake`, so the
/// source stops at once when asked even while no writer is sending, and a FIFO
/// opened before its writer waits for one instead of ending empty.
struct LineReader {
    let fd: Int32
    /// Readable when the source is asked to stop; -1 for none.
    let wake: Int32
    private let waits: Bool
    private var buffer = [UInt8](repeating: 0, count: 1 << 20)
    private var start = 0
    private var end = 0
    private var eof = false

    init(fd: Int32, wake: Int32) {
        self.fd = fd
        self.wake = wake
        var info = stat()
        waits = fstat(fd, &info) == 0 && (info.st_mode & S_IFMT) != S_IFREG
    }

    /// Calls `body` with the next line (without `\n`); false at the end of
    /// input, or once `wake` is readable (what is left unread then is dropped,
    /// as a partial last line of a stopped run would be).
    /// `idle` is called before waiting for a stream that has nothing to read yet.
    mutating func nextLine(idle: () -> Void, _ body: (UnsafeRawBufferPointer) throws -> Void) throws -> Bool {
        while true {
            if let newline = buffer[start..<end].firstIndex(of: UInt8(ascii: "\n")) {
                try buffer.withUnsafeBytes { raw in
                    try body(UnsafeRawBufferPointer(rebasing: raw[start..<newline]))
                }
                start = newline + 1
                return true
            }
            if eof {
                guard start < end else { return false }
                // A last line without its newline.
                try buffer.withUnsafeBytes { raw in try body(UnsafeRawBufferPointer(rebasing: raw[start..<end])) }
                start = end
                return true
            }
            try fill(idle: idle)
        }
    }

    private mutating func fill(idle: () -> Void) throws {
        if start > 0 {
            buffer.withUnsafeMutableBytes { raw in
                raw.baseAddress!.copyMemory(from: raw.baseAddress! + start, byteCount: end - start)
            }
            end -= start
            start = 0
        }
        if end == buffer.count {
            // A line longer than the buffer: grow rather than split it.
            buffer.append(contentsOf: repeatElement(0, count: buffer.count))
        }
        if waits {
            var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: wake, events: Int16(POLLIN), revents: 0)]
            let count = nfds_t(wake >= 0 ? 2 : 1)
            var ready = poll(&fds, count, 0)
            if ready == 0 {
                idle()
                ready = poll(&fds, count, -1)
            }
            if ready < 0 {
                if errno == EINTR { return }
                throw SystemError("read failed", errno)
            }
            if fds[1].revents != 0 {
                eof = true
                start = end
                return
            }
        }
        let count = buffer.withUnsafeMutableBytes { raw in
            Glibc.read(fd, raw.baseAddress! + end, raw.count - end)
        }
        if count < 0 {
            if errno == EINTR || errno == EAGAIN { return }
            throw SystemError("read failed", errno)
        }
        if count == 0 { eof = true }
        end += count
    }
}

/// Spaces batches so that records leave at `rate` per second on average.
struct Pacer {
    let rate: Double
    private let startNs = Clock.monotonicNs()
    private var sent = 0

    init(rate: Double) { self.rate = rate }

    /// Sleeps until `count` more records may go, waking early when stopped.
    mutating func wait(for count: Int, stopped: ManagedAtomic<Bool>) {
        sent += count
        let due = startNs + Int64(Double(sent) / rate * 1e9)
        while !stopped.load(ordering: .relaxed) {
            let remaining = due - Clock.monotonicNs()
            if remaining <= 0 { return }
            var spec = timespec(tv_sec: 0, tv_nsec: Int(min(remaining, 50_000_000)))
            nanosleep(&spec, nil)
        }
    }
}
